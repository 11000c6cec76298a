"""Kernel and initrd loading, backend-neutral (KVM and lguest both use it).

    result = load_kernel(memory, path, prefer_elf=True)
    initrd = load_initrd(memory, path, kernel_end=result.end)
    memory.write(zero_page, BootParams(...).render())

Loading validates first and writes guest memory only after every check passed; it
never touches VM state.  Each rule broken raises its own LoaderError subclass.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from launcher.loader import bzimage, elf
from launcher.loader.bootparams import get as bootparams_get
from launcher.loader.bootparams import BootParams, E820Entry, E820Type, HardwareSubarch, LoadFlags
from launcher.loader.cmdline import Cmdline
from launcher.loader.errors import InitrdTooLarge, InitrdUnreadable, KernelUnreadable, NotAKernel
from launcher.loader.result import InitrdPlacement, KernelKind, LoadResult, Segment

__all__ = [
    "BootParams", "Cmdline", "E820Entry", "E820Type", "HardwareSubarch", "InitrdPlacement", "KernelKind",
    "LoadFlags", "LoadResult", "Segment", "kernel_kind", "load_initrd", "load_kernel", "load_kernel_bytes",
    "read_kernel",
]

PAGE = 0x1000
XLF_KERNEL_64 = 0x1         # setup header xloadflags (protocol 2.12+): the kernel has a 64-bit entry
ELFCLASS64 = 2


def kernel_kind(data: bytes, *, prefer_elf: bool = True) -> KernelKind | None:
    """What load_kernel_bytes would load, from the headers alone (nothing decompressed);
    None when the headers cannot tell (a bzImage older than boot protocol 2.12)."""
    if elf.is_elf(data):
        return KernelKind.ELF64 if data[4:5] == bytes([ELFCLASS64]) else KernelKind.ELF32
    if not bzimage.is_bzimage(data):
        raise NotAKernel('neither an ELF vmlinux (no "\\x7fELF") nor a bzImage (no "HdrS" at 0x202)')
    if not prefer_elf:
        return KernelKind.BZIMAGE
    if len(data) < 0x238 or bootparams_get(data, "version") < 0x20C:
        return None
    return KernelKind.BZIMAGE_ELF64 if bootparams_get(data, "xloadflags") & XLF_KERNEL_64 else KernelKind.BZIMAGE_ELF32


def read_kernel(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise KernelUnreadable(f"cannot read kernel {path}: {exc.strerror}") from exc


def load_kernel_bytes(memory, data: bytes, *, prefer_elf: bool = True) -> LoadResult:
    """Load an ELF vmlinux, or a bzImage: its extracted ELF when prefer_elf, else its
    protected-mode code at 1 MiB (the original lguest way)."""
    if elf.is_elf(data):
        return elf.load_elf(memory, data)
    if not bzimage.is_bzimage(data):
        raise NotAKernel('neither an ELF vmlinux (no "\\x7fELF") nor a bzImage (no "HdrS" at 0x202)')
    image = bzimage.parse(data)
    if not prefer_elf:
        return bzimage.load_protected_mode(memory, image)
    compression, vmlinux = bzimage.extract_vmlinux(image)
    result = elf.load_elf(memory, vmlinux, what=f"vmlinux inside the bzImage ({compression})", bz=True)
    return dataclasses.replace(result, setup_header=image.setup_header, compression=compression)


def load_kernel(memory, path: Path, *, prefer_elf: bool = True) -> LoadResult:
    return load_kernel_bytes(memory, read_kernel(path), prefer_elf=prefer_elf)


def load_initrd(memory, path: Path, *, kernel_end: int, max_end: int | None = None) -> InitrdPlacement:
    """Place the initrd page-aligned at the top of guest RAM (or below max_end)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InitrdUnreadable(f"cannot read initrd {path}: {exc.strerror}") from exc
    top = memory.size if max_end is None else min(memory.size, max_end)
    addr = (top - len(data)) & ~(PAGE - 1)
    if not data:
        raise InitrdUnreadable(f"initrd {path} is empty")
    if addr < kernel_end:
        raise InitrdTooLarge(
            f"initrd {path} ({len(data):#x} bytes) does not fit between the kernel's end {kernel_end:#x} "
            f"and the top of guest RAM {top:#x}")
    memory.write(addr, data)
    return InitrdPlacement(addr, len(data))
