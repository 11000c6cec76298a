"""Checks a guest's kernel and initramfs before any launcher starts: one clear line each.

A kernel the backend cannot boot otherwise shows up much later, as a launcher that exited
with a status and an empty console.  The checks read only the files' headers.
"""
from __future__ import annotations

from pathlib import Path

from launcher.errors import LoaderError
from launcher.loader import kernel_kind

HEADER_BYTES = 0x1000       # enough for an ELF identification and a bzImage's setup header


def kernel_problem(path: Path, backend: str | None = None, what: str = "--guest-kernel") -> str | None:
    """Why path cannot be booted (on backend, when given), or None."""
    path = Path(path)
    if not path.exists():
        return f"{what} {path}: no such file"
    if path.is_dir():
        inside = [p for p in (path / "vmlinux", path / "arch/x86/boot/bzImage") if p.is_file()]
        hint = f" (this one holds {', '.join(map(str, inside))})" if inside else ""
        return f"{what} {path} is a directory; give the kernel file, a vmlinux or a bzImage{hint}"
    try:
        with open(path, "rb") as kernel:
            header = kernel.read(HEADER_BYTES)
    except OSError as exc:
        return f"{what} {path}: cannot read it: {exc.strerror}"
    try:
        kind = kernel_kind(header)      # as KVM loads it; backends that run a bzImage's own code boot any kind
    except LoaderError:
        return (f"{what} {path} is not a kernel: neither an ELF vmlinux nor a bzImage "
                f"(use the tree's vmlinux or arch/x86/boot/bzImage)")
    if backend is None or kind is None:
        return None
    boots = _backend(backend).boots
    if kind in boots:
        return None
    if not kind.is_64bit and all(k.is_64bit for k in boots):
        return (f"{what} {path} is a 32-bit kernel ({kind.value}); the {backend} backend boots only 64-bit "
                f"x86 kernels: rebuild it with CONFIG_64BIT=y (`lguest-harness kernel config --merge TREE` "
                f"sets it; `make tinyconfig` alone gives a 32-bit config)")
    return f"{what} {path} is a {kind.value}, which the {backend} backend does not boot"


def initrd_problem(path: Path, what: str = "--guest-initrd") -> str | None:
    path = Path(path)
    if not path.exists():
        return f"{what} {path}: no such file"
    if path.is_dir():
        return f"{what} {path} is a directory; give a cpio archive (e.g. from `find . | cpio -o -H newc`)"
    try:
        size = path.stat().st_size
    except OSError as exc:
        return f"{what} {path}: cannot read it: {exc.strerror}"
    return f"{what} {path} is empty" if size == 0 else None


def _backend(name: str):
    from harness.backends import register
    from launcher.hypervisor import backend_class
    register()                      # "fake" and "qemu" are the harness's
    return backend_class(name)

