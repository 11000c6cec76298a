"""Drive a guest's console with pexpect: commands with exit status, a kept serial log.

`Guest.run("cmd")` frames the command between two unique markers so prompts and
kernel messages never confuse it; the markers are built from quoted pieces, so the
terminal's echo of the command line never matches them.
"""
from __future__ import annotations

import io
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

import pexpect

from harness.initramfs import PROMPT, READY_MARKER

TAIL_CHARS = 2000
LAUNCHER_TAIL_LINES = 8


class GuestError(AssertionError):
    """The guest did not do what the test asked; the message ends with the console's tail."""


class GuestTimeout(GuestError):
    pass


class GuestExited(GuestError):
    pass


@dataclass(frozen=True)
class CommandResult:
    output: str
    status: int

    @property
    def ok(self) -> bool:
        return self.status == 0


# Terminal queries and controls (ash asks for the cursor position with ESC[6n): they
# belong in the log, not on the screen of a person watching a scripted run.
CSI_SEQUENCE = re.compile(r"\x1b\[[0-9;?]*[@-~]")
CSI_UNFINISHED = re.compile(r"\x1b(\[[0-9;?]*)?\Z")


class SerialLog(io.StringIO):
    """Everything the guest printed; pexpect writes into it as it reads."""

    echo = None
    _held = ""      # the start of a control sequence split across two reads

    def echo_to(self, stream) -> None:
        """Also copy what arrives from now on to stream (e.g. stdout for a person watching)."""
        self.echo = stream

    def write(self, text: str) -> int:
        if self.echo is not None:
            self.echo.write(self._for_people(text))
            self.echo.flush()
        return super().write(text)

    def _for_people(self, text: str) -> str:
        text = self._held + text
        unfinished = CSI_UNFINISHED.search(text)
        self._held = unfinished.group() if unfinished else ""
        return CSI_SEQUENCE.sub("", text[:len(text) - len(self._held)])

    def tail(self, chars: int = TAIL_CHARS) -> str:
        return self.getvalue()[-chars:]


class Guest:
    """A running guest behind a pexpect child (usually `lguest-harness boot`)."""

    def __init__(self, child: pexpect.spawn, name: str = "guest", prompt: str = PROMPT,
                 launcher_log: Path | None = None):
        self.child = child
        self.name = name
        self.prompt = prompt
        self.launcher_log_path = launcher_log
        self.serial = SerialLog()
        child.logfile_read = self.serial
        self.exit_status: int | None = None

    # -- pexpect passthrough, with readable failures ------------------------------------
    def expect(self, pattern, timeout: float = 60) -> int:
        """Wait for pattern (or a list of them); returns the index matched."""
        try:
            return self.child.expect(pattern, timeout=timeout)
        except pexpect.TIMEOUT:
            raise self._failure(GuestTimeout, f"timed out after {timeout} s waiting for {_shown(pattern)!r}") from None
        except pexpect.EOF:
            self._reap()
            raise self._failure(GuestExited, f"launcher exited (status {self.exit_status}) "
                                f"while waiting for {_shown(pattern)!r}") from None

    def sendline(self, line: str = "") -> None:
        self.child.sendline(line)

    def interact(self) -> None:
        self.child.interact()

    @property
    def serial_log(self) -> str:
        return self.serial.getvalue()

    @property
    def launcher_log(self) -> str:
        """What the launcher itself said (its --verbose stderr), when it was captured."""
        try:
            return self.launcher_log_path.read_text(errors="replace") if self.launcher_log_path else ""
        except OSError:
            return ""

    # -- commands ---------------------------------------------------------------------------
    def wait_ready(self, timeout: float = 180) -> None:
        self.expect(re.escape(READY_MARKER), timeout)
        self.expect(re.escape(self.prompt), 30)

    def run(self, command: str, timeout: float = 60) -> CommandResult:
        """Run one shell line in the guest; returns its output (\\n line ends) and exit status."""
        token = secrets.token_hex(4)
        begin, end = f"LH{token}B", f"LH{token}E"
        self.sendline(f"echo LH{token}''B; {command}; echo LH{token}''E:$?")
        self.expect(re.escape(begin) + r"\r?\n", timeout)
        # The line end too: "E:1" of an exit status 127 may arrive before the "27".
        self.expect(re.escape(end) + r":(\d+)\r?\n", timeout)
        output = self.child.before.replace("\r\n", "\n")
        status = int(self.child.match.group(1))
        self.expect(re.escape(self.prompt), timeout)
        return CommandResult(output, status)

    def poweroff(self, timeout: float = 60) -> int:
        """`poweroff -f` in the guest; returns the launcher's exit status."""
        self.sendline("poweroff -f")
        return self.wait_exit(timeout)

    def wait_exit(self, timeout: float = 60) -> int:
        self.expect(pexpect.EOF, timeout)
        return self._reap()

    def close(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)
        self._reap()

    # -- internals ---------------------------------------------------------------------------
    def _reap(self) -> int | None:
        if self.exit_status is None and not self.child.isalive():
            self.child.close()
            status = self.child.exitstatus
            self.exit_status = status if status is not None else 128 + (self.child.signalstatus or 0)
        return self.exit_status

    def _failure(self, kind, what: str) -> GuestError:
        """The console's tail, and the launcher's last lines: often the cause (a kernel it
        refused, an instruction the host cannot emulate, a panic it recognised)."""
        message = f"{self.name}: {what}"
        launcher = [line for line in self.launcher_log.splitlines() if line.strip()][-LAUNCHER_TAIL_LINES:]
        if launcher:
            if self.exit_status is not None:
                message += f"\nlauncher's last word: {launcher[-1]}"   # why it ended, as boot reports it
            message += f"\n--- launcher log tail ({self.launcher_log_path}) ---\n" + "\n".join(launcher)
        return kind(f"{message}\n--- console tail ---\n{readable(self.serial.tail())}")


def _shown(pattern):
    """A pattern as people read it: re.escape undone, when it was an escaped literal."""
    if not isinstance(pattern, str):
        return pattern
    plain = re.sub(r"\\(.)", r"\1", pattern)
    return plain if re.escape(plain) == pattern else pattern


def readable(text: str) -> str:
    """A serial log for people: no terminal control sequences, no carriage returns."""
    return CSI_SEQUENCE.sub("", text).replace("\r\n", "\n").replace("\r", "")
