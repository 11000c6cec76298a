"""Drive a guest: commands with stdout, stderr and exit status, files in and out, a kept serial log.

When the guest's /init started lh-agent (it says so on the console: harness.initramfs's
AGENT_MARKER), `Guest.run`, `put` and `get` go over the command channel (harness.channel) on
the virtio console: no typing, no echo, stdout apart from stderr, bytes exact both ways.  The
serial console (pexpect) keeps the kernel log for failure reports; the channel drains it while
it waits, so the guest never blocks on a full console.

Without the agent (a custom initramfs, a local shell playing the guest) `Guest.run("cmd")`
types on the serial console, as before, and says so once: it frames the command between two
unique markers so prompts and kernel messages never confuse it; the markers are built from
quoted pieces, so the terminal's echo of the command line never matches them.  That path has
no separate stderr (a tty mixes them) and no put or get.
"""
from __future__ import annotations

import io
import os
import re
import secrets
import signal
import termios
import time
import tty
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pexpect

from harness import channel as ch
from harness.initramfs import AGENT_MARKER, PROMPT, READY_MARKER

TAIL_CHARS = 2000
LAUNCHER_TAIL_LINES = 8
STATE_DUMP = "launcher state dump:"   # launcher.launcher.Launcher.describe_state()


class GuestError(AssertionError):
    """The guest did not do what the test asked; the message ends with the console's tail."""


class GuestTimeout(GuestError):
    pass


class GuestExited(GuestError):
    pass


class GuestProtocolError(GuestError):
    """The guest wrote something on the command channel that is not a frame of the request."""


class GuestCommandError(GuestError):
    """The guest refused or failed a request (put, get): the message says why."""


class SerialFallback(UserWarning):
    """Guest.run types on the serial console: the guest has no command channel agent."""


_said_fallback = False
HVC_ANNOUNCED = re.compile(r"virtio console \(hvc0\) on (\S+)")
CHANNEL_OPEN_TIMEOUT = 60       # the agent's start is a fork+exec (~1 s where kernel code is emulated)


@dataclass(frozen=True)
class CommandResult:
    """output: stdout and stderr as they came, as text (what a terminal shows; "\\n" line
    ends); stdout/stderr apart, as text (UTF-8, undecodable bytes replaced) and as bytes.
    On the serial path stdout is the combined output and stderr is empty."""

    output: str
    status: int
    stdout_bytes: bytes | None = field(default=None, compare=False)   # equal: same output and status
    stderr_bytes: bytes = field(default=b"", compare=False)

    @property
    def ok(self) -> bool:
        return self.status == 0

    @property
    def stdout(self) -> str:
        if self.stdout_bytes is None:
            return self.output
        return self.stdout_bytes.decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return self.stderr_bytes.decode("utf-8", "replace")


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
        self.channel: ch.Channel | None = None
        self.channel_log = bytearray()      # the agent's and its shell's own diagnostics
        self._channel_fd: int | None = None

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
    def wait_ready(self, timeout: float = 180, channel_expected: bool = True) -> None:
        """Wait for the ready marker; then open the command channel when the guest announced its
        agent, else wait for the serial shell's prompt and use that (said once)."""
        self.expect(re.escape(READY_MARKER), timeout)
        found = re.search(re.escape(AGENT_MARKER) + r"(\w+)", self.serial_log)
        if found and found.group(1) != "console":
            self.open_channel(found.group(1))    # the serial shell's prompt comes when it comes
            return
        self.expect(re.escape(self.prompt), 30)
        if found:
            self.open_channel(found.group(1))
        elif channel_expected:
            _say_fallback(self.name)

    def open_restored_channel(self, timeout: float = CHANNEL_OPEN_TIMEOUT) -> None:
        """A guest restored from a snapshot whose agent already waits on hvc0: once the restored
        launcher announces its new pty, say hello (the agent's ready frame went to the old one)."""
        deadline = time.monotonic() + timeout
        while not HVC_ANNOUNCED.search(self.launcher_log):
            if not self.child.isalive() or time.monotonic() >= deadline:
                raise self._failure(GuestError, "the restored launcher announced no hvc0 pty for the agent")
            time.sleep(0.005)
        self.open_channel("hvc0", max(deadline - time.monotonic(), 1), agent_started=True)

    def open_channel(self, where: str, timeout: float = CHANNEL_OPEN_TIMEOUT, agent_started: bool = False) -> None:
        """Talk to lh-agent: on hvc0 (the pty the launcher announced) or on the console itself."""
        if where == "console":
            fd, others = self.child.child_fd, {}
            os.set_blocking(fd, False)      # the channel writes only what fits, reading meanwhile
        elif where == "hvc0":
            found = HVC_ANNOUNCED.search(self.launcher_log)
            if not found:
                raise self._failure(GuestError, "the guest started its agent on hvc0 but the launcher "
                                    "announced no hvc0 pty (boot with --hvc=pty)")
            fd = os.open(found.group(1), os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
            tty.setraw(fd, termios.TCSANOW)     # not TCSAFLUSH: the agent's ready frame may be waiting
            self._channel_fd = fd
            others = {self.child.child_fd: self._drain_serial}
        else:
            raise self._failure(GuestError, f"the guest's agent is on {where!r}, which the harness does not know")
        channel = ch.Channel(fd, others=others, log=self.channel_log.extend)
        try:
            with self._channel_errors("opening the command channel"):
                if where == "hvc0" and not agent_started:
                    channel.wait_ready(timeout)
                channel.hello(timeout)
        except BaseException:
            self._close_channel()
            raise
        self.channel = channel

    def run(self, command: str, timeout: float = 60, input: str | bytes | None = None) -> CommandResult:
        """Run shell command(s) in the guest; returns its output and exit status.  input (text
        or bytes) is the command's stdin (the channel only); without it, stdin is /dev/null.
        On timeout the command is killed and GuestTimeout raised: the guest stays usable."""
        if self.channel is not None:
            return self._run_channel(command, timeout, input)
        if input is not None:
            raise GuestError(f"{self.name}: run(input=...) needs the command channel; "
                             "this guest has only its serial console")
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

    def put(self, local: str | Path, remote: str, mode: int | None = None, timeout: float = 600) -> None:
        """Copy the host file local to the guest's path remote, byte for byte (mode: local's
        permission bits unless given)."""
        local = Path(local)
        size = local.stat().st_size
        mode = local.stat().st_mode & 0o7777 if mode is None else mode
        with self._channel_errors(f"put {local} -> {remote}"):
            self._need_channel("put").put(ch.chunks_of(local), size, remote, mode, timeout)

    def get(self, remote: str, local: str | Path, timeout: float = 600) -> Path:
        """Copy the guest's file remote to the host path local, byte for byte; returns local."""
        local = Path(local)
        with open(local, "wb") as out, self._channel_errors(f"get {remote} -> {local}"):
            self._need_channel("get").get(remote, out.write, timeout)
        return local

    def poweroff(self, timeout: float = 60) -> int:
        """`poweroff -f` in the guest; returns the launcher's exit status."""
        if self.channel is not None and self.channel.dead is None:
            with self._channel_errors("poweroff"):
                self.channel.send_only("poweroff -f")
        else:
            self.sendline("poweroff -f")
        return self.wait_exit(timeout)

    def wait_exit(self, timeout: float = 60) -> int:
        self.expect(pexpect.EOF, timeout)
        return self._reap()

    def close(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)
        self._reap()
        self._close_channel()

    def state_dump(self, timeout: float = 3.0) -> str:
        """The launcher's state dump (SIGQUIT: where the vCPU is, every virtqueue's indices and
        service thread), for an error about a guest that stopped answering; "" if none came."""
        if not self.child.isalive() or self.launcher_log_path is None:
            return ""
        before = self.launcher_log.count(STATE_DUMP)
        os.kill(self.child.pid, signal.SIGQUIT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.launcher_log.count(STATE_DUMP) > before:
                time.sleep(0.2)     # written as one block, but maybe in more than one write()
                dump = self.launcher_log.rsplit(STATE_DUMP, 1)[1]
                return f"\n--- {STATE_DUMP} ---" + dump.rstrip()
            time.sleep(0.05)
        return ""

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

    # -- the command channel -------------------------------------------------------------------
    def _run_channel(self, command: str, timeout: float, input) -> CommandResult:
        data = input.encode() if isinstance(input, str) else input
        with self._channel_errors(f"running {command[:200]!r}"):
            stdout, stderr, status, combined = self.channel.run(command, timeout, data)
        return CommandResult(combined.decode("utf-8", "replace"), status, stdout, stderr)

    def _need_channel(self, what: str) -> ch.Channel:
        if self.channel is None:
            raise GuestError(f"{self.name}: {what} needs the command channel (lh-agent in the guest's "
                             "initramfs); this guest has only its serial console")
        return self.channel

    def _drain_serial(self) -> None:
        """The serial console has bytes: into the log (pexpect logs what it reads)."""
        try:
            self.child.read_nonblocking(1 << 16, timeout=0)
        except pexpect.TIMEOUT:
            pass

    def _channel_errors(self, what: str):
        return _ChannelErrors(self, what)

    def _close_channel(self) -> None:
        if self._channel_fd is not None:
            os.close(self._channel_fd)
            self._channel_fd = None
        self.channel = None


class _ChannelErrors:
    """Channel exceptions -> GuestError kinds with the console's tail (and the channel's log)."""

    def __init__(self, guest: Guest, what: str):
        self.guest, self.what = guest, what

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if err is None:
            return False
        guest = self.guest
        if isinstance(err, pexpect.EOF):
            guest._reap()
            raise guest._failure(GuestExited, f"{self.what}: launcher exited (status {guest.exit_status})") from None
        if not isinstance(err, ch.ChannelError):
            return False
        detail = str(err)
        if isinstance(err, ch.ChannelTimeout) and (err.stdout or err.stderr):
            detail += (f"\n--- its stdout so far ---\n{err.stdout[-2000:].decode('utf-8', 'replace')}"
                       f"\n--- its stderr so far ---\n{err.stderr[-2000:].decode('utf-8', 'replace')}")
        if guest.channel_log:
            detail += f"\n--- agent log ---\n{bytes(guest.channel_log[-2000:]).decode('utf-8', 'replace')}"
        kinds = {ch.ChannelTimeout: GuestTimeout, ch.ProtocolError: GuestProtocolError,
                 ch.RemoteError: GuestCommandError, ch.ChannelClosed: GuestExited}
        cls = next((v for k, v in kinds.items() if isinstance(err, k)), GuestError)
        if isinstance(err, ch.ChannelClosed):
            detail += " -- the guest is declared dead"
        if isinstance(err, (ch.ChannelTimeout, ch.ChannelClosed)):
            detail += guest.state_dump()
        raise guest._failure(cls, f"{self.what}: {detail}") from err


def _say_fallback(name: str) -> None:
    global _said_fallback
    if not _said_fallback:
        _said_fallback = True
        warnings.warn(f"{name}: no command channel agent in this guest (no {AGENT_MARKER.strip()!r} line on "
                      "the console): Guest.run types on the serial console (slow; no stderr, put or get)",
                      SerialFallback, stacklevel=3)


def _shown(pattern):
    """A pattern as people read it: re.escape undone, when it was an escaped literal."""
    if not isinstance(pattern, str):
        return pattern
    plain = re.sub(r"\\(.)", r"\1", pattern)
    return plain if re.escape(plain) == pattern else pattern


def readable(text: str) -> str:
    """A serial log for people: no terminal control sequences, no carriage returns."""
    return CSI_SEQUENCE.sub("", text).replace("\r\n", "\n").replace("\r", "")
