"""In-memory device backends: test doubles for the console, block, net and rng devices.

Each one that feeds input to a guest signals readiness through an eventfd, so the real
service threads can poll it exactly as they poll a tty or a tap.
"""
from __future__ import annotations

import collections
import os
import random
import threading
import time

from launcher.virtqueue import scatter
from launcher.devices.net import Offloads
from launcher.io.fdutil import advance

SECTOR = 512


class _Readiness:
    """An eventfd that is readable exactly while `pending()` is true (update under a lock)."""

    def __init__(self):
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.closed = False

    def set(self, on: bool) -> None:
        if self.closed:
            return
        if on:
            os.eventfd_write(self.fd, 1)
        else:
            try:
                os.eventfd_read(self.fd)
            except BlockingIOError:
                pass

    def close(self) -> None:
        if not self.closed:
            os.close(self.fd)
            self.closed = True


# -- console ----------------------------------------------------------------------------------

class MemoryConsole:
    """feed() bytes to the guest; guest output accumulates in .output."""

    def __init__(self):
        self._lock = threading.Condition()
        self._input = bytearray()
        self._eof = False
        self.output = bytearray()
        self._ready = _Readiness()

    def feed(self, data: bytes) -> None:
        with self._lock:
            self._input += data
            self._ready.set(True)

    def end_input(self) -> None:
        with self._lock:
            self._eof = True
            self._ready.set(True)

    def fileno(self) -> int | None:
        return None if self._ready.closed else self._ready.fd

    def read(self, limit: int) -> bytes | None:
        with self._lock:
            if not self._input:
                return b"" if self._eof else None
            data = bytes(self._input[:limit])
            del self._input[:limit]
            if not self._input and not self._eof:
                self._ready.set(False)
            return data

    def write(self, views) -> None:
        with self._lock:
            for view in views:
                self.output += view
            self._lock.notify_all()

    def wait_output(self, expected: bytes, timeout: float = 5.0) -> bytes:
        """Block until `expected` appears in the output; return the output so far."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while expected not in self.output:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{expected!r} not in console output {bytes(self.output[-200:])!r}")
                self._lock.wait(left)
            return bytes(self.output)

    def close(self) -> None:
        self._ready.close()


# -- block ------------------------------------------------------------------------------------

class MemoryDisk:
    """A disk in a bytearray; counts flushes."""

    def __init__(self, size: int = 64 * SECTOR, *, data: bytes | None = None, read_only: bool = False,
                 ident: bytes = b"memory-disk"):
        self.data = bytearray(data if data is not None else bytes(size))
        self.size = len(self.data)
        self.read_only = read_only
        self.flushes = 0
        self.ident = ident

    def read_into(self, views, offset: int) -> int:
        end = min(self.size, offset + sum(len(v) for v in views))
        return scatter(views, bytes(self.data[offset:end]))

    def write_from(self, views, offset: int) -> int:
        data = b"".join(bytes(v) for v in views)
        if offset + len(data) > self.size:
            raise AssertionError("the device let a write reach past the end of the disk")
        self.data[offset:offset + len(data)] = data
        return len(data)

    def flush(self) -> None:
        self.flushes += 1

    def device_id(self) -> bytes:
        return self.ident

    def close(self) -> None:
        pass


class FaultyDisk:
    """Wraps a disk backend: EIO on chosen sectors, short reads, failing flushes."""

    def __init__(self, inner, *, eio_sectors=(), short_read_sectors=(), fail_flush: bool = False):
        self.inner = inner
        self.size, self.read_only = inner.size, inner.read_only
        self.eio_sectors = set(eio_sectors)
        self.short_read_sectors = set(short_read_sectors)
        self.fail_flush = fail_flush

    def _sectors(self, views, offset: int) -> set[int]:
        length = sum(len(v) for v in views)
        return set(range(offset // SECTOR, (offset + length + SECTOR - 1) // SECTOR))

    def read_into(self, views, offset: int) -> int:
        touched = self._sectors(views, offset)
        if touched & self.eio_sectors:
            raise OSError(5, "injected EIO on read")
        if touched & self.short_read_sectors:
            return max(0, self.inner.read_into(views, offset) - SECTOR)
        return self.inner.read_into(views, offset)

    def write_from(self, views, offset: int) -> int:
        if self._sectors(views, offset) & self.eio_sectors:
            raise OSError(5, "injected EIO on write")
        return self.inner.write_from(views, offset)

    def flush(self) -> None:
        if self.fail_flush:
            raise OSError(5, "injected flush failure")
        self.inner.flush()

    def device_id(self) -> bytes:
        return self.inner.device_id()

    def close(self) -> None:
        self.inner.close()


# -- net --------------------------------------------------------------------------------------

class MemoryNet:
    """One end of an in-memory link; frames (virtio_net_hdr first) go to the peer's inbox."""

    def __init__(self):
        self._lock = threading.Condition()
        self._inbox: collections.deque[bytes] = collections.deque()
        self._ready = _Readiness()
        self.peer: MemoryNet | None = None
        self.hdr_size = 10
        self.offloads = Offloads()
        self.truncated = 0

    # NetBackend side (the device's end)
    def fileno(self) -> int | None:
        return None if self._ready.closed else self._ready.fd

    def configure(self, hdr_size: int, offloads: Offloads) -> None:
        self.hdr_size, self.offloads = hdr_size, offloads

    def recv_into(self, views) -> int | None:
        with self._lock:
            if not self._inbox:
                return None
            frame = self._inbox.popleft()
            if not self._inbox:
                self._ready.set(False)
        done = scatter(views, frame)
        if done < len(frame):
            self.truncated += 1     # as tun does: the rest of the frame is dropped
        return done

    def send(self, views) -> None:
        self.peer._deliver(b"".join(bytes(v) for v in views))

    # the test's side
    def inject(self, frame: bytes) -> None:
        """Send a frame (header included) towards the other end."""
        self.peer._deliver(frame)

    def take(self, timeout: float = 5.0) -> bytes:
        """The next frame delivered to this end."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not self._inbox:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no frame arrived")
                self._lock.wait(left)
            frame = self._inbox.popleft()
            if not self._inbox:
                self._ready.set(False)
            return frame

    def _deliver(self, frame: bytes) -> None:
        with self._lock:
            self._inbox.append(frame)
            self._ready.set(True)
            self._lock.notify_all()

    def close(self) -> None:
        self._ready.close()


def net_pair() -> tuple[MemoryNet, MemoryNet]:
    """(device end, host end) of an in-memory link."""
    a, b = MemoryNet(), MemoryNet()
    a.peer, b.peer = b, a
    return a, b


# -- rng --------------------------------------------------------------------------------------

class SeededEntropy:
    """Deterministic "entropy" from random.Random(seed), handed out at most `chunk` bytes per
    read so the device's short-read handling is exercised."""

    BLOCK = 4096

    def __init__(self, seed: int = 0, chunk: int | None = None):
        self.seed = seed
        self._rng = random.Random(seed)
        self._buf = bytearray()
        self.chunk = chunk
        self.reads = 0

    @classmethod
    def stream(cls, seed: int, n: int) -> bytes:
        """The first n bytes a fresh SeededEntropy(seed) hands out."""
        rng, out = random.Random(seed), bytearray()
        while len(out) < n:
            out += rng.randbytes(cls.BLOCK)
        return bytes(out[:n])

    def _take(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._buf += self._rng.randbytes(self.BLOCK)
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def fill(self, views) -> int:
        views = [v for v in views if len(v)]
        total = 0
        while views:
            want = sum(len(v) for v in views)
            self.reads += 1
            done = scatter(views, self._take(min(want, self.chunk or want)))
            total += done
            views = advance(views, done)
        return total

    def close(self) -> None:
        pass
