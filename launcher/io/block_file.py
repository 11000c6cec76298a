"""A disk image file as a block backend: preadv/pwritev at explicit offsets, fdatasync to flush.

Explicit offsets (not lseek + readv as the original did) keep requests independent of any
shared file position.  The size is fixed when the file is opened; the device refuses any
request past it, so this backend never extends the file.
"""
from __future__ import annotations

import os

from launcher.io.fdutil import preadv_full, pwritev_all


class FileBlockBackend:
    def __init__(self, path: str | os.PathLike, *, read_only: bool = False):
        self.path = os.fspath(path)
        self.read_only = read_only
        flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
        self.fd = os.open(self.path, flags)
        self.size = os.lseek(self.fd, 0, os.SEEK_END)   # works for block devices too
        self.closed = False

    def read_into(self, views: list[memoryview], offset: int) -> int:
        return preadv_full(self.fd, views, offset)

    def write_from(self, views: list[memoryview], offset: int) -> int:
        return pwritev_all(self.fd, views, offset)

    def flush(self) -> None:
        os.fdatasync(self.fd)

    def device_id(self) -> bytes:
        return os.path.basename(self.path).encode()[:20]

    def close(self) -> None:
        if not self.closed:
            os.close(self.fd)
            self.closed = True
