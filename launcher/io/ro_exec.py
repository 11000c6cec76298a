"""python3 -m launcher.io.ro_exec DIR [--writable PATH]... -- COMMAND...: run COMMAND in a mount
namespace of its own where DIR (and every mount below it) is read-only, except each PATH (the
daemon's own socket and pid-file directories); the host's mounts are untouched.

For read-only virtio-fs shares: virtiofsd has no read-only switch, so the host kernel refuses
the writes instead (EROFS).  Needs CAP_SYS_ADMIN (root), as virtiofsd's own sandbox does.
"""
from __future__ import annotations

import ctypes
import os
import sys

CLONE_NEWNS = 0x00020000
MS_REC, MS_PRIVATE, MS_BIND = 0x4000, 1 << 18, 0x1000
AT_FDCWD, AT_RECURSIVE = -100, 0x8000
MOUNT_ATTR_RDONLY = 0x1
SYS_MOUNT_SETATTR = 442         # x86-64


class MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        sys.exit(f"ro_exec: {what}: {os.strerror(err)}")


def make_read_only(directory: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "making / private")
    path = directory.encode()
    _check(libc.mount(path, path, None, MS_BIND | MS_REC, None), f"bind-mounting {directory}")
    _setattr(libc, path, MountAttr(attr_set=MOUNT_ATTR_RDONLY), AT_RECURSIVE)


def make_writable(path: str) -> None:
    """A bind of `path` onto itself, made writable again (that one mount only)."""
    libc = ctypes.CDLL(None, use_errno=True)
    raw = path.encode()
    _check(libc.mount(raw, raw, None, MS_BIND, None), f"bind-mounting {path}")
    _setattr(libc, raw, MountAttr(attr_clr=MOUNT_ATTR_RDONLY), 0)


def _setattr(libc, path: bytes, attr: MountAttr, flags: int) -> None:
    _check(libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, path, flags, ctypes.byref(attr), ctypes.sizeof(attr)),
           f"mount_setattr on {path.decode()}")


def main(argv: list[str]) -> None:
    if "--" not in argv or argv.index("--") == 0 or argv.index("--") + 1 == len(argv):
        sys.exit("usage: python3 -m launcher.io.ro_exec DIR [--writable PATH]... -- COMMAND...")
    at = argv.index("--")
    ours, command = argv[:at], argv[at + 1:]
    writable = [ours[i + 1] for i, arg in enumerate(ours[:-1]) if arg == "--writable"]
    make_read_only(ours[0])
    for path in writable:
        make_writable(path)
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
