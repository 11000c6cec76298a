"""The C declarations cffi compiles against the system's <linux/kvm.h>.

Every struct is declared partial ("...;"), so cffi asks the C compiler for the real
offsets and sizes: nothing here is a hand-counted layout.  Only the fields the
launcher uses are named.  Constants are "#define X ..." so their values also come
from the headers (the KVM_* ioctl numbers are _IO/_IOW macros there).

native/kvm_build.py compiles these into native._kvm at install time and stamps the
module with digest(), so native.kvm can tell a build of older declarations (a stale
in-tree extension after this file changed) from a current one.
"""
import hashlib

CDEF = r"""
typedef unsigned char __u8; typedef unsigned short __u16; typedef unsigned int __u32;
typedef unsigned long long __u64; typedef int __s32;

struct kvm_userspace_memory_region {
    __u32 slot; __u32 flags; __u64 guest_phys_addr; __u64 memory_size; __u64 userspace_addr; ...;
};
struct kvm_regs {
    __u64 rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp;
    __u64 r8, r9, r10, r11, r12, r13, r14, r15, rip, rflags; ...;
};
struct kvm_segment {
    __u64 base; __u32 limit; __u16 selector; __u8 type;
    __u8 present, dpl, db, s, l, g, avl, unusable; ...;
};
struct kvm_dtable { __u64 base; __u16 limit; ...; };
struct kvm_sregs {
    struct kvm_segment cs, ds, es, fs, gs, ss, tr, ldt;
    struct kvm_dtable gdt, idt;
    __u64 cr0, cr2, cr3, cr4, cr8, efer, apic_base; ...;
};
struct kvm_fpu { __u16 fcw; __u32 mxcsr; ...; };
struct kvm_cpuid_entry2 {
    __u32 function; __u32 index; __u32 flags; __u32 eax; __u32 ebx; __u32 ecx; __u32 edx; ...;
};
struct kvm_cpuid2 { __u32 nent; struct kvm_cpuid_entry2 entries[]; ...; };
struct kvm_pit_config { __u32 flags; ...; };
struct kvm_irq_level { __u32 irq; __u32 level; ...; };
struct kvm_ioeventfd { __u64 datamatch; __u64 addr; __u32 len; __s32 fd; __u32 flags; ...; };
struct kvm_irqfd { __u32 fd; __u32 gsi; __u32 flags; __u32 resamplefd; ...; };

struct lh_exit_io { __u8 direction; __u8 size; __u16 port; __u32 count; __u64 data_offset; };
struct lh_exit_mmio { __u64 phys_addr; __u8 data[8]; __u32 len; __u8 is_write; };
struct lh_exit_internal { __u32 suberror; __u32 ndata; __u64 data[16]; };
struct lh_exit_emulation { __u32 suberror; __u32 ndata; __u64 flags; __u8 insn_size; __u8 insn_bytes[15]; };
struct lh_exit_fail_entry { __u64 hardware_entry_failure_reason; __u32 cpu; };

/* Where each exit's payload lives inside the mmap'ed struct kvm_run. */
static const int LH_RUN_IMMEDIATE_EXIT;
static const int LH_RUN_EXIT_REASON;
static const int LH_RUN_PAYLOAD;

/* ioctl(2) from C: the GIL is released and EINTR comes back as -EINTR. */
long lh_ioctl(int fd, unsigned long request, void *arg);
long lh_ioctl_int(int fd, unsigned long request, unsigned long arg);

#define KVM_API_VERSION ...
#define KVM_GET_API_VERSION ...
#define KVM_CREATE_VM ...
#define KVM_CHECK_EXTENSION ...
#define KVM_GET_VCPU_MMAP_SIZE ...
#define KVM_GET_SUPPORTED_CPUID ...
#define KVM_SET_USER_MEMORY_REGION ...
#define KVM_SET_TSS_ADDR ...
#define KVM_SET_IDENTITY_MAP_ADDR ...
#define KVM_CREATE_IRQCHIP ...
#define KVM_CREATE_PIT2 ...
#define KVM_IRQ_LINE ...
#define KVM_IOEVENTFD ...
#define KVM_IRQFD ...
#define KVM_CREATE_VCPU ...
#define KVM_RUN ...
#define KVM_GET_REGS ...
#define KVM_SET_REGS ...
#define KVM_GET_SREGS ...
#define KVM_SET_SREGS ...
#define KVM_SET_FPU ...
#define KVM_SET_CPUID2 ...
#define KVM_GET_TSC_KHZ ...
#define KVM_PIT_SPEAKER_DUMMY ...
#define KVM_CAP_IRQCHIP ...
#define KVM_CAP_PIT2 ...
#define KVM_CAP_IOEVENTFD ...
#define KVM_CAP_IRQFD ...
#define KVM_CAP_IMMEDIATE_EXIT ...
#define KVM_CAP_GET_TSC_KHZ ...
#define KVM_CAP_USER_MEMORY ...
#define KVM_CAP_SET_TSS_ADDR ...
#define KVM_EXIT_UNKNOWN ...
#define KVM_EXIT_EXCEPTION ...
#define KVM_EXIT_IO ...
#define KVM_EXIT_HYPERCALL ...
#define KVM_EXIT_DEBUG ...
#define KVM_EXIT_HLT ...
#define KVM_EXIT_MMIO ...
#define KVM_EXIT_IRQ_WINDOW_OPEN ...
#define KVM_EXIT_SHUTDOWN ...
#define KVM_EXIT_FAIL_ENTRY ...
#define KVM_EXIT_INTR ...
#define KVM_EXIT_INTERNAL_ERROR ...
#define KVM_EXIT_SYSTEM_EVENT ...
#define KVM_EXIT_IO_IN ...
#define KVM_EXIT_IO_OUT ...
#define KVM_INTERNAL_ERROR_EMULATION ...
#define KVM_INTERNAL_ERROR_SIMUL_EX ...
#define KVM_INTERNAL_ERROR_DELIVERY_EV ...
#define KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES ...
#define KVM_IOEVENTFD_FLAG_DATAMATCH ...
"""

SOURCE = r"""
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <linux/kvm.h>

/* Mirrors of kvm_run's anonymous-union members, checked against the real ones below. */
struct lh_exit_io { __u8 direction; __u8 size; __u16 port; __u32 count; __u64 data_offset; };
struct lh_exit_mmio { __u64 phys_addr; __u8 data[8]; __u32 len; __u8 is_write; };
struct lh_exit_internal { __u32 suberror; __u32 ndata; __u64 data[16]; };
struct lh_exit_emulation { __u32 suberror; __u32 ndata; __u64 flags; __u8 insn_size; __u8 insn_bytes[15]; };
struct lh_exit_fail_entry { __u64 hardware_entry_failure_reason; __u32 cpu; };

#define LH_SAME(ours, theirs) \
    _Static_assert(sizeof(struct ours) == sizeof(((struct kvm_run *)0)->theirs), #theirs " size")
LH_SAME(lh_exit_io, io);
LH_SAME(lh_exit_mmio, mmio);
LH_SAME(lh_exit_internal, internal);
LH_SAME(lh_exit_emulation, emulation_failure);
LH_SAME(lh_exit_fail_entry, fail_entry);
#define LH_FIELD(ours, theirs, f) \
    _Static_assert(offsetof(struct ours, f) == \
                   offsetof(struct kvm_run, theirs.f) - offsetof(struct kvm_run, theirs), #theirs "." #f)
LH_FIELD(lh_exit_io, io, port); LH_FIELD(lh_exit_io, io, count); LH_FIELD(lh_exit_io, io, data_offset);
LH_FIELD(lh_exit_mmio, mmio, data); LH_FIELD(lh_exit_mmio, mmio, len); LH_FIELD(lh_exit_mmio, mmio, is_write);
LH_FIELD(lh_exit_internal, internal, ndata); LH_FIELD(lh_exit_internal, internal, data);
LH_FIELD(lh_exit_emulation, emulation_failure, flags);
LH_FIELD(lh_exit_emulation, emulation_failure, insn_size);
LH_FIELD(lh_exit_emulation, emulation_failure, insn_bytes);
LH_FIELD(lh_exit_fail_entry, fail_entry, cpu);
_Static_assert(offsetof(struct kvm_run, io) == offsetof(struct kvm_run, mmio), "one union");
_Static_assert(offsetof(struct kvm_run, io) == offsetof(struct kvm_run, emulation_failure), "one union");
_Static_assert(offsetof(struct kvm_run, io) == offsetof(struct kvm_run, fail_entry), "one union");

static const int LH_RUN_IMMEDIATE_EXIT = offsetof(struct kvm_run, immediate_exit);
static const int LH_RUN_EXIT_REASON = offsetof(struct kvm_run, exit_reason);
static const int LH_RUN_PAYLOAD = offsetof(struct kvm_run, io);

long lh_ioctl(int fd, unsigned long request, void *arg)
{
    long r = ioctl(fd, request, arg);
    return r < 0 ? -errno : r;
}

long lh_ioctl_int(int fd, unsigned long request, unsigned long arg)
{
    long r = ioctl(fd, request, arg);
    return r < 0 ? -errno : r;
}
"""

# The build stamps the extension with the digest of the declarations it was built from.
DIGEST_CDEF = "\n#define LH_BINDINGS_DIGEST ...\n"


def digest() -> int:
    """A 63-bit hash of CDEF and SOURCE (fits a C long long either way round)."""
    return int.from_bytes(hashlib.sha256(f"{CDEF}\0{SOURCE}".encode()).digest()[:8], "big") >> 1


def digest_source() -> str:
    return f"\n#define LH_BINDINGS_DIGEST {digest()}LL\n"
