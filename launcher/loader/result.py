"""What loading a kernel produced: everything a backend needs, and no VM state."""
from __future__ import annotations

import enum
from dataclasses import dataclass


class KernelKind(enum.Enum):
    ELF32 = "ELF32 vmlinux (EM_386)"
    ELF64 = "ELF64 vmlinux (EM_X86_64)"
    BZIMAGE = "bzImage, protected-mode code at 1 MiB"
    BZIMAGE_ELF32 = "bzImage, extracted ELF32 vmlinux"
    BZIMAGE_ELF64 = "bzImage, extracted ELF64 vmlinux"

    @property
    def is_64bit(self) -> bool:
        return self in (KernelKind.ELF64, KernelKind.BZIMAGE_ELF64)


@dataclass(frozen=True)
class Segment:
    """One piece of the kernel placed in guest-physical memory."""

    paddr: int
    filesz: int
    memsz: int

    @property
    def end(self) -> int:
        return self.paddr + self.memsz


@dataclass(frozen=True)
class LoadResult:
    entry: int
    segments: tuple[Segment, ...]
    kind: KernelKind
    setup_header: bytes | None = None  # the bzImage's setup header (0x1f1..), to copy into boot_params
    compression: str | None = None     # the bzImage payload's compressor, when extracted

    @property
    def end(self) -> int:
        """First guest-physical address above the loaded kernel."""
        return max(seg.end for seg in self.segments)


@dataclass(frozen=True)
class InitrdPlacement:
    addr: int
    size: int  # the file's size; the placement is page aligned
