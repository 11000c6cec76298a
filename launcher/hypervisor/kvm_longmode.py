"""64-bit direct boot: identity page tables, a flat GDT, and the register state Linux's
64-bit boot protocol asks for (Documentation/x86/boot.rst, "64-bit Boot Protocol"):
paging on with an identity map, __BOOT_CS (0x10) a flat 64-bit code segment,
__BOOT_DS (0x18) a flat data segment, interrupts off, %rsi = the zero page.

Low-memory layout (all below 640 KiB, inside the first e820 RAM entry, as Firecracker
does; Linux copies the zero page and command line before it reuses that memory):
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

GDT_ADDR = 0x500
IDT_ADDR = 0x520
ZERO_PAGE = 0x7000
STACK_TOP = 0x8FF0
PML4_ADDR = 0x9000
PDPT_ADDR = 0xA000
PD_ADDR = 0xB000          # 4 page directories: 0xB000..0xEFFF map 4 GiB with 2 MiB pages
PD_COUNT = 4
CMDLINE_ADDR = 0x20000
CMDLINE_CAPACITY = 0x800  # x86 COMMAND_LINE_SIZE
TSS_ADDR = 0xFFFBD000     # KVM_SET_TSS_ADDR: three pages just below the 4 GiB BIOS area
IDENTITY_MAP_ADDR = 0xFFFBC000

PTE_PRESENT, PTE_RW, PTE_PS = 0x1, 0x2, 0x80
PAGE_2M = 0x200000

CR0_PE, CR0_MP, CR0_ET, CR0_NE, CR0_WP, CR0_AM, CR0_PG = 1, 2, 0x10, 0x20, 1 << 16, 1 << 18, 1 << 31
CR4_PAE = 0x20
EFER_LME, EFER_LMA = 0x100, 0x400

BOOT_CS, BOOT_DS, BOOT_TSS = 0x10, 0x18, 0x20


@dataclass(frozen=True)
class Descriptor:
    """One GDT entry, kept in the same terms as struct kvm_segment."""

    selector: int
    type: int
    s: int
    l: int
    db: int
    base: int = 0
    limit: int = 0xFFFFF
    g: int = 1
    present: int = 1
    dpl: int = 0

    def encode(self) -> int:
        flags = (self.g << 3) | (self.db << 2) | (self.l << 1)
        access = (self.present << 7) | (self.dpl << 5) | (self.s << 4) | self.type
        return ((self.base & 0xFF000000) << 32 | flags << 52 | (self.limit & 0xF0000) << 32
                | access << 40 | (self.base & 0xFFFFFF) << 16 | (self.limit & 0xFFFF))

    def to_kvm(self, seg) -> None:
        seg.base, seg.limit, seg.selector, seg.type = self.base, self.limit_bytes, self.selector, self.type
        seg.present, seg.dpl, seg.db, seg.s, seg.l, seg.g, seg.avl, seg.unusable = (
            self.present, self.dpl, self.db, self.s, self.l, self.g, 0, 0)

    @property
    def limit_bytes(self) -> int:
        return (self.limit << 12 | 0xFFF) if self.g else self.limit


CODE64 = Descriptor(BOOT_CS, type=0xB, s=1, l=1, db=0)        # execute/read, accessed
DATA = Descriptor(BOOT_DS, type=0x3, s=1, l=0, db=1)          # read/write, accessed
TSS = Descriptor(BOOT_TSS, type=0xB, s=0, l=0, db=0, limit=0x67, g=0)  # busy 64-bit TSS
GDT = (None, None, CODE64, DATA, TSS)


def write_gdt(memory) -> int:
    """Write the GDT; returns its limit."""
    entries = [0 if d is None else d.encode() for d in GDT]
    memory.write(GDT_ADDR, struct.pack(f"<{len(entries)}Q", *entries))
    memory.write(IDT_ADDR, bytes(8))
    return len(entries) * 8 - 1


def write_page_tables(memory) -> None:
    """Identity-map the first 4 GiB (or less, bounded by the low tables) with 2 MiB pages."""
    memory.write_u64(PML4_ADDR, PDPT_ADDR | PTE_PRESENT | PTE_RW)
    pdpt = [(PD_ADDR + i * 0x1000) | PTE_PRESENT | PTE_RW for i in range(PD_COUNT)]
    memory.write(PDPT_ADDR, struct.pack("<512Q", *(pdpt + [0] * (512 - PD_COUNT))))
    pds = [(i * PAGE_2M) | PTE_PRESENT | PTE_RW | PTE_PS for i in range(512 * PD_COUNT)]
    memory.write(PD_ADDR, struct.pack(f"<{len(pds)}Q", *pds))


def _load_flat_segments(sregs, gdt_limit: int, code: Descriptor, tss: Descriptor) -> None:
    """Our GDT and an empty IDT, cs from `code`, every data segment flat, tr from `tss`."""
    sregs.gdt.base, sregs.gdt.limit = GDT_ADDR, gdt_limit
    sregs.idt.base, sregs.idt.limit = IDT_ADDR, 7
    code.to_kvm(sregs.cs)
    for seg in (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
        DATA.to_kvm(seg)
    tss.to_kvm(sregs.tr)


def set_long_mode_sregs(sregs, gdt_limit: int) -> None:
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_PG
    sregs.cr3 = PML4_ADDR
    sregs.cr4 = CR4_PAE
    sregs.efer = EFER_LME | EFER_LMA
    _load_flat_segments(sregs, gdt_limit, CODE64, TSS)


def set_boot_regs(regs, entry: int, boot_params: int) -> None:
    for name in ("rax", "rbx", "rcx", "rdx", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"):
        setattr(regs, name, 0)
    regs.rip = entry
    regs.rsi = boot_params
    regs.rsp = regs.rbp = STACK_TOP
    regs.rflags = 0x2  # bit 1 is reserved-one; IF off


CODE32 = Descriptor(BOOT_CS, type=0xB, s=1, l=0, db=1)
TSS32 = Descriptor(BOOT_TSS, type=0xB, s=0, l=0, db=0, limit=0x67, g=0)


def set_protected_mode_sregs(sregs, gdt_limit: int) -> None:
    """The 32-bit boot protocol: flat segments, paging off, %esi = the zero page."""
    sregs.cr0 = CR0_PE | CR0_ET
    sregs.cr3 = sregs.cr4 = sregs.efer = 0
    _load_flat_segments(sregs, gdt_limit, CODE32, TSS32)
