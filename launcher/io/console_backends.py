"""Host backends for the virtio console: any pair of fds, stdio, and a pty for pexpect.

(launcher.io.console is the 8250 UART's host side; these serve launcher.devices.console.)

Raw mode: when the input fd is a tty we turn off ISIG, ICANON and ECHO (as the original's
setup_console did) so ^C and every keystroke reach the guest, and put the saved settings
back on every exit path: close(), leaving a `with` block, and interpreter exit (atexit).
"""
from __future__ import annotations

import atexit
import os
import termios
import tty

from launcher.io.fdutil import readable_now, writev_all

_LFLAG = 3


class FdConsole:
    """Console input from in_fd, output to out_fd."""

    def __init__(self, in_fd: int, out_fd: int, *, raw: bool = True, owned_fds: tuple[int, ...] = ()):
        self.in_fd, self.out_fd = in_fd, out_fd
        self._owned = owned_fds
        self._saved: list | None = None
        self.closed = False
        if raw and os.isatty(in_fd):
            self._saved = termios.tcgetattr(in_fd)
            attrs = termios.tcgetattr(in_fd)
            attrs[_LFLAG] &= ~(termios.ISIG | termios.ICANON | termios.ECHO)
            termios.tcsetattr(in_fd, termios.TCSANOW, attrs)
            atexit.register(self.restore_terminal)

    def fileno(self) -> int | None:
        return None if self.closed else self.in_fd

    def read(self, limit: int) -> bytes | None:
        # poll first instead of O_NONBLOCK: stdin's file description is shared with the shell.
        if self.closed or limit <= 0 or not readable_now(self.in_fd):
            return None
        try:
            return os.read(self.in_fd, limit)
        except OSError:     # EIO: the other end of a pty hung up
            return b""

    def write(self, views: list[memoryview]) -> None:
        writev_all(self.out_fd, views)

    def restore_terminal(self) -> None:
        if self._saved is not None:
            try:
                termios.tcsetattr(self.in_fd, termios.TCSANOW, self._saved)
            except termios.error:
                pass        # the tty is gone; nothing left to restore
            self._saved = None
            atexit.unregister(self.restore_terminal)

    def close(self) -> None:
        if self.closed:
            return
        self.restore_terminal()
        self.closed = True
        for fd in self._owned:
            os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class StdioConsole(FdConsole):
    """The launcher's own terminal, as the original used it."""

    def __init__(self, *, raw: bool = True):
        super().__init__(0, 1, raw=raw)


class PtyConsole(FdConsole):
    """A fresh pty: the device holds the master, a test (pexpect.fdpexpect.fdspawn(peer_fd))
    or a user (`screen peer_path`) the slave, which is raw so bytes pass unchanged."""

    def __init__(self):
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        self.peer_fd = slave
        self.peer_path = os.ttyname(slave)
        super().__init__(master, master, raw=False, owned_fds=(master, slave))


class CallbackConsole(FdConsole):
    """Output to a callable; input from the launcher's stdin (in_fd=0, put in the original's
    raw mode) or, with in_fd None, from feed(), through a pipe the device can poll."""

    def __init__(self, out, *, in_fd: int | None = None):
        self.out = out
        self._feed_fd = None
        owned: tuple[int, ...] = ()
        if in_fd is None:
            in_fd, self._feed_fd = os.pipe2(os.O_CLOEXEC)
            os.set_blocking(self._feed_fd, False)
            owned = (in_fd, self._feed_fd)
        super().__init__(in_fd, -1, raw=True, owned_fds=owned)

    def write(self, views: list[memoryview]) -> None:
        self.out(b"".join(views))

    def feed(self, data: bytes) -> int:
        """Queue input for the guest; returns how many bytes fitted (the rest: try again)."""
        if self._feed_fd is None or self.closed:
            return 0
        try:
            return os.write(self._feed_fd, data)
        except BlockingIOError:
            return 0
