"""The host side of the guest console: stdout out, stdin in (a reader thread).

Output is written with os.write straight to the fd (binary-safe, no buffering to
flush).  Input: when stdin is a terminal it is put in raw mode, so keys (^C included)
go to the guest, and restored on every exit path; three ^C within one second end the
launcher, as the only way out of a guest that ignores them.
"""
from __future__ import annotations

import atexit
import os
import termios
import time
import tty
from typing import Callable

from launcher.io.threads import start_shielded

CTRL_C = 0x03
ESCAPE_PRESSES, ESCAPE_WINDOW = 3, 1.0
RETRY_DELAY = 0.01


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def stdout_writer(fd: int = 1) -> Callable[[bytes], None]:
    return lambda data: write_all(fd, data)


class CtrlCCounter:
    """Pure: feed input bytes, learn whether the escape sequence completed."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._times: list[float] = []

    def feed(self, data: bytes) -> bool:
        for byte in data:
            if byte == CTRL_C:
                now = self._clock()
                self._times = [t for t in self._times if now - t < ESCAPE_WINDOW] + [now]
                if len(self._times) >= ESCAPE_PRESSES:
                    return True
        return False


class ConsoleInput:
    def __init__(self, deliver: Callable[[bytes], int], on_escape: Callable[[], None], fd: int = 0):
        self.fd = fd
        self._deliver = deliver
        self._on_escape = on_escape
        self._saved = None
        self._counter = CtrlCCounter()

    def start(self) -> None:
        try:
            if os.isatty(self.fd):
                self._saved = termios.tcgetattr(self.fd)
                atexit.register(self.restore)
                # Fully raw, output included: the guest's bytes must reach the terminal
                # unchanged (it sends \r\n itself; ONLCR would make that \r\r\n).  TCSANOW, not
                # the default TCSAFLUSH: input typed ahead (a restored guest is ready at once) is kept.
                tty.setraw(self.fd, termios.TCSANOW)
        except (OSError, termios.error):
            self._saved = None
        start_shielded(self._read_loop, "console-input")

    def _read_loop(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 1024)
            except OSError:
                return
            if not data:
                return  # EOF: the guest just gets no more input
            if self._saved is not None and self._counter.feed(data):
                self._on_escape()
                return
            while data:
                accepted = self._deliver(data)
                data = data[accepted:]
                if data:
                    time.sleep(RETRY_DELAY)  # the guest is not reading; wait rather than drop

    def restore(self) -> None:
        if self._saved is not None:
            try:
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            except (OSError, termios.error):
                pass
            self._saved = None
