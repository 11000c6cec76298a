"""virtio-console (5.3), as the original Launcher had it: one port, no features, no config.

Queue 0 (receiveq) carries host input to the guest, queue 1 (transmitq) guest output to the
host.  Three ^C within one second, each in a buffer of its own, end the launcher (the
original's "exit hack"): the device calls on_abort, which defaults to raising SIGINT.
"""
from __future__ import annotations

import os
import signal
import time
from typing import Callable, Protocol

from launcher.devices.base import DeviceId, GuestFault, VirtioDevice, WrongDirectionBuffers
from launcher.virtqueue import Chain

CTRL_C = 3
ABORT_PRESSES = 3
ABORT_WINDOW = 1.0      # seconds, "within about a second"

RECEIVEQ, TRANSMITQ = 0, 1


class ConsoleBackend(Protocol):
    """Where console bytes come from and go to."""

    def fileno(self) -> int | None:
        """Readable when read() has bytes (or EOF) for the guest; None if never."""

    def read(self, limit: int) -> bytes | None:
        """Up to `limit` bytes without blocking; None when nothing is pending; b"" at EOF."""

    def write(self, views: list[memoryview]) -> None:
        """Write every byte of `views` (partial writes are the backend's job)."""

    def close(self) -> None: ...


def _default_abort() -> None:
    os.kill(os.getpid(), signal.SIGINT)


class AbortDetector:
    """Counts lone ^C buffers; three within ABORT_WINDOW seconds fire."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.count = 0
        self.start = 0.0

    def feed(self, data: bytes) -> bool:
        if data != bytes([CTRL_C]):
            self.count = 0
            return False
        self.count += 1
        if self.count == 1:
            self.start = self.clock()
            return False
        if self.count < ABORT_PRESSES:
            return False
        self.count = 0
        return self.clock() - self.start <= ABORT_WINDOW


class ConsoleDevice(VirtioDevice):
    device_id = DeviceId.CONSOLE
    name = "console"
    QUEUES = ("receiveq", "transmitq")

    def __init__(self, backend: ConsoleBackend, *, on_abort: Callable[[], None] = _default_abort,
                 clock: Callable[[], float] = time.monotonic, **kwargs):
        super().__init__(**kwargs)
        self.backend = backend
        self.on_abort = on_abort
        self.abort = AbortDetector(clock)
        self.input_closed = False

    def handler(self, index: int):
        return self._receive if index == RECEIVEQ else self._transmit

    def ready_for_chain(self, index: int) -> bool:
        # The receive queue takes a buffer only when there is input to put in it; otherwise
        # the buffer stays with the driver (the original blocked in readv instead).
        return index != RECEIVEQ or not self.input_closed

    def input_fd(self, index: int) -> int | None:
        if index != RECEIVEQ or self.input_closed:
            return None
        return self.backend.fileno()

    def _receive(self, chain: Chain) -> int | None:
        if chain.readable:
            raise WrongDirectionBuffers(self.name, "receiveq", chain.head, "device-readable")
        data = self.backend.read(chain.writable_len)
        if data is None:
            return None
        if data == b"":
            self.log.warning("console input ended; ignoring console input from now on")
            self.input_closed = True
            return None
        written = chain.write_into(data)
        if self.abort.feed(data):
            self.log.warning("three ^C within %.0fs: ending the launcher", ABORT_WINDOW)
            self.on_abort()
        return written

    def _transmit(self, chain: Chain) -> int:
        if chain.writable:
            raise WrongDirectionBuffers(self.name, "transmitq", chain.head, "device-writable")
        try:
            self.backend.write(chain.readable)
        except OSError as err:
            # The host side went away (pty closed): drop the output, keep the guest running.
            self.metrics.host_errors += 1
            self.log.warning("console output dropped: %s", str(err))
        return 0

    def close_backend(self) -> None:
        self.backend.close()


__all__ = ["ConsoleDevice", "ConsoleBackend", "AbortDetector", "RECEIVEQ", "TRANSMITQ", "GuestFault"]
