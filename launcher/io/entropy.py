"""/dev/urandom as the entropy backend (the original read /dev/random; urandom never blocks
and is what the kernel recommends).  Short reads happen, so fills loop."""
from __future__ import annotations

import os

from launcher.io.fdutil import readv_full


class UrandomBackend:
    def __init__(self, path: str = "/dev/urandom"):
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.closed = False

    def fill(self, views: list[memoryview]) -> int:
        return readv_full(self.fd, views)

    def close(self) -> None:
        if not self.closed:
            os.close(self.fd)
            self.closed = True
