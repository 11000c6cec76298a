"""Map an ELF vmlinux's PT_LOAD segments at their physical addresses (map_elf in the original).

Everything is validated first (header, every program header, every segment's place
in the file and in guest memory); only then is guest memory written.
"""
from __future__ import annotations

import io
import struct

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from launcher.loader.errors import (
    ElfBadPhentsize, ElfBadPhnum, ElfMalformed, ElfNoLoadSegment, ElfNotExecutable, ElfWrongClass,
    EntryOutsideMemory, SegmentOutsideFile, SegmentOutsideMemory, SegmentSizeInverted,
)
from launcher.loader.result import KernelKind, LoadResult, Segment

ELF_MAGIC = b"\x7fELF"
PHDR_SIZE = {32: 32, 64: 56}
MACHINE = {32: "EM_386", 64: "EM_X86_64"}
# pyelftools' ways of saying "garbage" (OverflowError: offsets near 2**63, found by test_loader_props)
_GARBAGE = (ELFError, ValueError, KeyError, OSError, EOFError, OverflowError, struct.error)


def is_elf(data: bytes) -> bool:
    return data[:4] == ELF_MAGIC


def _check_header(header, elfclass: int, what: str) -> None:
    if elfclass not in MACHINE:
        raise ElfWrongClass(f"{what}: ELF class {elfclass} is neither ELFCLASS32 nor ELFCLASS64")
    if header["e_machine"] != MACHINE[elfclass]:
        raise ElfWrongClass(
            f"{what}: ELFCLASS{elfclass} kernels must have e_machine {MACHINE[elfclass]}, "
            f"not {header['e_machine']}")
    if header["e_type"] != "ET_EXEC":
        raise ElfNotExecutable(f"{what}: e_type is {header['e_type']}, a vmlinux must be ET_EXEC")
    phentsize = header["e_phentsize"]
    if phentsize != PHDR_SIZE[elfclass]:
        raise ElfBadPhentsize(
            f"{what}: e_phentsize {phentsize:#x} is not sizeof(Elf{elfclass}_Phdr) {PHDR_SIZE[elfclass]:#x}")
    phnum = header["e_phnum"]
    if not 1 <= phnum <= 65536 // phentsize:
        raise ElfBadPhnum(f"{what}: e_phnum {phnum} is outside 1..{65536 // phentsize}")


def _segments(elf: ELFFile, file_size: int, mem_size: int, what: str) -> list[tuple[Segment, int]]:
    found = []
    for index in range(elf.num_segments()):
        phdr = elf.get_segment(index).header
        if phdr["p_type"] != "PT_LOAD":
            continue
        seg = Segment(phdr["p_paddr"], phdr["p_filesz"], phdr["p_memsz"])
        offset = phdr["p_offset"]
        if seg.filesz > seg.memsz:
            raise SegmentSizeInverted(
                f"{what}: segment {index} has p_filesz {seg.filesz:#x} > p_memsz {seg.memsz:#x}")
        if offset + seg.filesz > file_size:
            raise SegmentOutsideFile(
                f"{what}: segment {index} file range {offset:#x}+{seg.filesz:#x} "
                f"runs past the end of the file ({file_size:#x})")
        if seg.end > mem_size:
            raise SegmentOutsideMemory(
                f"{what}: segment {index} at p_paddr {seg.paddr:#x}+{seg.memsz:#x} "
                f"does not fit in guest memory (0..{mem_size:#x}); give the guest more memory")
        found.append((seg, offset))
    if not found:
        raise ElfNoLoadSegment(f"{what}: no PT_LOAD segment")
    return found


def validate_elf(data: bytes, mem_size: int, what: str = "kernel") -> tuple[int, int, list]:
    """Return (elfclass, entry, [(Segment, file offset)]) or raise the rule broken."""
    try:
        elf = ELFFile(io.BytesIO(data))
        header = elf.header
        elfclass = elf.elfclass
        _check_header(header, elfclass, what)
        segments = _segments(elf, len(data), mem_size, what)
    except _GARBAGE as exc:
        raise ElfMalformed(f"{what}: malformed ELF headers ({exc})") from exc
    entry = header["e_entry"]
    if not 0 <= entry < mem_size:
        raise EntryOutsideMemory(f"{what}: e_entry {entry:#x} is outside guest memory (0..{mem_size:#x})")
    return elfclass, entry, segments


def load_elf(memory, data: bytes, what: str = "kernel", bz: bool = False) -> LoadResult:
    elfclass, entry, segments = validate_elf(data, memory.size, what)
    for seg, offset in segments:
        memory.write(seg.paddr, memoryview(data)[offset:offset + seg.filesz])
        # The rest (.bss) must read as zero even if this memory was used before.
        memory.fill(seg.paddr + seg.filesz, seg.memsz - seg.filesz)
    kinds = {(32, False): KernelKind.ELF32, (64, False): KernelKind.ELF64,
             (32, True): KernelKind.BZIMAGE_ELF32, (64, True): KernelKind.BZIMAGE_ELF64}
    return LoadResult(entry=entry, segments=tuple(s for s, _ in segments), kind=kinds[(elfclass, bz)])
