"""Scatter-gather I/O on host fds that finishes the job: short reads and partial writes loop."""
from __future__ import annotations

import os
import select

WRITE_POLL_MS = 100


def advance(views: list[memoryview], nbytes: int) -> list[memoryview]:
    """The views left after the first nbytes bytes have been transferred."""
    out = []
    for view in views:
        if nbytes >= len(view):
            nbytes -= len(view)
            continue
        out.append(view[nbytes:] if nbytes else view)
        nbytes = 0
    return out


def writev_all(fd: int, views: list[memoryview]) -> int:
    """Write every byte; waits for POLLOUT on a non-blocking fd.  Raises OSError on failure."""
    views = [v for v in views if len(v)]
    total = 0
    while views:
        try:
            n = os.writev(fd, views)
        except BlockingIOError:
            _wait_writable(fd)
            continue
        if n <= 0:
            raise OSError(f"write to fd {fd} made no progress")
        total += n
        views = advance(views, n)
    return total


def _wait_writable(fd: int) -> None:
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    poller.poll(WRITE_POLL_MS)


def readv_full(fd: int, views: list[memoryview]) -> int:
    """Fill every view, looping over short reads (/dev/urandom); stops early only at EOF."""
    views = [v for v in views if len(v)]
    total = 0
    while views:
        n = os.readv(fd, views)
        if n == 0:
            break
        total += n
        views = advance(views, n)
    return total


def preadv_full(fd: int, views: list[memoryview], offset: int) -> int:
    views = [v for v in views if len(v)]
    total = 0
    while views:
        n = os.preadv(fd, views, offset + total)
        if n == 0:
            break
        total += n
        views = advance(views, n)
    return total


def pwritev_all(fd: int, views: list[memoryview], offset: int) -> int:
    views = [v for v in views if len(v)]
    total = 0
    while views:
        n = os.pwritev(fd, views, offset + total)
        if n <= 0:
            raise OSError(f"pwrite to fd {fd} at {offset + total:#x} made no progress")
        total += n
        views = advance(views, n)
    return total


def readable_now(fd: int) -> bool:
    """Whether a read would not block (the original's will_block, inverted)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))
