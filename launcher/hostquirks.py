"""Everything specific to unusual KVM hosts, in one place.

Today that is kvm_pvm (a KVM served from inside a VM, with shadow paging and an
instruction emulator for guest kernel code): see shared/reference/kvm-host-notes.md.
Each quirk is data: the kernel option that works around it and why, or an
instruction the emulator rejects with the remedy that is known to help.
"""
from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path

PVM_MODULE = Path("/sys/module/kvm_pvm")
KVM_DEVICE = Path("/dev/kvm")
# Set to 1, the host detection reports no /dev/kvm: a test run sees what a CI machine without
# KVM sees (the kvm backend skipped, auto choosing QEMU-TCG) on a host that has it.
HIDE_KVM_ENV = "LGUEST_HARNESS_HIDE_KVM"


class HostKind(enum.Enum):
    KVM = "kvm"
    KVM_PVM = "kvm_pvm"


def detect_host(module_path: Path = PVM_MODULE) -> HostKind:
    return HostKind.KVM_PVM if module_path.exists() else HostKind.KVM


def kvm_present(device: Path = KVM_DEVICE) -> bool:
    """Whether this host offers /dev/kvm (LGUEST_HARNESS_HIDE_KVM=1 says it does not)."""
    return os.environ.get(HIDE_KVM_ENV) != "1" and device.exists()


def guest_kernel_code_slow(host: HostKind) -> bool:
    """Whether KVM here emulates guest kernel code (kvm_pvm): a boot takes ~20 s instead of ~1."""
    return host is HostKind.KVM_PVM


def guest_clock_jumps_on_restore(host: HostKind) -> bool:
    """Whether a restored guest's TSC reads the host's (kvm_pvm sets no TSC offset): its clock
    jumps by the snapshot's age, and its kernel then calls NTP's second_overflow() once per
    second skipped -- measured here as 2.4 s before a 4.7-hour-old snapshot first answers,
    0.2 s at 15 minutes.  Ordinary KVM restores the TSC (KVM_SET_MSRS sets its offset)."""
    return host is HostKind.KVM_PVM


def cpuid_reaches_guest(host: HostKind) -> bool:
    """Whether the guest sees the CPUID the launcher sets (kvm_pvm shows it the host's own)."""
    return host is not HostKind.KVM_PVM


@dataclass(frozen=True)
class KernelOption:
    key: str
    value: str | None
    reason: str

    def render(self) -> str:
        return self.key if self.value is None else f"{self.key}={self.value}"


_PVM = "kvm_pvm detected (/sys/module/kvm_pvm): "
# glibc (2.36) features whose string/memory functions use ymm/zmm registers.
NO_AVX_HWCAPS = ("AVX", "AVX2", "AVX512F", "AVX512VL", "AVX512BW", "AVX512DQ", "AVX512CD", "FMA",
                 "AVX_Fast_Unaligned_Load")
PVM_OPTIONS = (
    KernelOption("noxsave", None, _PVM + "its emulator cannot run xrstor in guest kernel code"),
    KernelOption("clearcpuid", "smap,popcnt",
                 _PVM + "its emulator cannot run clac/stac or popcnt, and CPUID masking has no effect there"),
    KernelOption("rodata", "off", _PVM + "as the measured kvm_pvm boots used"),
    KernelOption("kvm_pvm_quirks", None,
                 _PVM + "enables the guest patch's syscall workaround (the first user-space syscall is "
                 "mis-delivered); never use it elsewhere"),
    # Unknown name=value options reach init's environment, and from there every process.
    KernelOption("GLIBC_TUNABLES", "glibc.cpu.hwcaps=" + ",".join("-" + f for f in NO_AVX_HWCAPS),
                 _PVM + "guest user code runs natively with the host's AVX/AVX-512 state enabled, but a "
                 "noxsave kernel switches only x87/SSE registers, so concurrent processes would "
                 "clobber each other's AVX registers; glibc in the guest must not use them"),
)


def smp_warning(host: HostKind, cpus: int) -> str | None:
    """What to tell a user who asks for several vCPUs where Linux cannot bring them up in useful time."""
    if host is HostKind.KVM_PVM and cpus > 1:
        return (f"--cpus={cpus} on kvm_pvm: the vCPUs are there (INIT/SIPI work, each AP has a thread), but "
                f"Linux's secondary-CPU bring-up runs emulated here and did not finish in 6 minutes in a "
                f"measured SMP recipe kernel (a uniprocessor boot reaches user space in ~1 CPU-minute); the "
                f"recipe kernel is uniprocessor (CONFIG_SMP off), so it uses one vCPU: use --cpus 1 here")
    return None


def kernel_options(host: HostKind, tsc_khz: int | None) -> list[KernelOption]:
    """Options to add to the guest command line for this host."""
    options = []
    if tsc_khz:
        options.append(KernelOption(
            "tsc_early_khz", str(tsc_khz), "KVM_GET_TSC_KHZ; TSC calibration against the PIT fails when port I/O is slow"))
    if host is HostKind.KVM_PVM:
        options.extend(PVM_OPTIONS)
    return options


# -- instructions the kvm_pvm emulator rejects ---------------------------------------
LEGACY_PREFIXES = frozenset((0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0x66, 0x67))


@dataclass(frozen=True)
class KnownInstruction:
    name: str
    remedy: str


_XSAVE_REMEDY = "boot the guest with noxsave (the launcher adds it on kvm_pvm hosts)"
_PATCH_REMEDY = ("build the guest with the project's kvm_pvm compatibility patch and config "
                 "(`lguest-harness kernel build`)")
_INT3_REMEDY = ("int3 cannot run in guest kernel code here: disable JUMP_LABEL, KPROBES and FTRACE, and skip "
                "Linux 6.1's int3 self-test (" + _PATCH_REMEDY + ")")


def _modrm_reg(modrm: int) -> int:
    return (modrm >> 3) & 7


def decode(insn: bytes) -> tuple[str | None, KnownInstruction | None]:
    """Name a rejected instruction from its bytes, if it is one of the known cases."""
    i, prefixes = 0, set()
    while i < len(insn) and insn[i] in LEGACY_PREFIXES:
        prefixes.add(insn[i])
        i += 1
    if i < len(insn) and 0x40 <= insn[i] <= 0x4F:  # REX
        i += 1
    op = insn[i:]
    if op[:1] == b"\xcc":
        return "int3", KnownInstruction("int3", _INT3_REMEDY)
    if op[:1] == b"\x9b":
        return "fwait", KnownInstruction("fwait", "fwait in fpu__drop on the first exec: " + _PATCH_REMEDY)
    if op[:3] in (b"\x0f\x01\xca", b"\x0f\x01\xcb"):
        name = "clac" if op[2] == 0xCA else "stac"
        return name, KnownInstruction(name, "boot the guest with clearcpuid=smap (added automatically on kvm_pvm)")
    if op[:2] == b"\x0f\xb8" and 0xF3 in prefixes:
        return "popcnt", KnownInstruction("popcnt", "boot the guest with clearcpuid=popcnt (added automatically on kvm_pvm)")
    if op[:2] == b"\x0f\xc7" and len(op) > 2 and _modrm_reg(op[2]) == 1 and insn[i - 1:i] and 0x48 <= insn[i - 1] <= 0x4F:
        name = "lock cmpxchg16b" if 0xF0 in prefixes else "cmpxchg16b"
        return name, KnownInstruction(name, "use SLOB instead of SLUB in the guest config, or boot with clearcpuid=cx16")
    if op[:2] == b"\x0f\xae" and len(op) > 2 and op[2] < 0xC0:
        names = {4: "xsave", 5: "xrstor", 6: "xsaveopt"}
        name = names.get(_modrm_reg(op[2]))
        if name:
            return name, KnownInstruction(name, _XSAVE_REMEDY)
    if op[:2] == b"\x0f\xc7" and len(op) > 2 and op[2] < 0xC0 and _modrm_reg(op[2]) in (3, 5):
        name = "xrstors" if _modrm_reg(op[2]) == 3 else "xsaves"
        return name, KnownInstruction(name, _XSAVE_REMEDY)
    return None, None
