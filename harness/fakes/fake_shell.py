"""A tiny shell for the fake lguest guest, so the console API (harness.console.Guest) works
on `--backend fake` exactly as on a real guest.

It is enabled by `fake.shell` on the kernel command line (harness.launch adds it whenever a
GuestSpec's backend is "fake").  After its device exercise the fake guest prints the
harness's READY_MARKER line and PROMPT on the virtio console, then reads what the host
sends on the console's receiveq and answers on its transmitq, through the real Launcher,
lguest device page and virtqueues.  `poweroff` powers the guest off (launcher exit 0);
`exit [N]` (or ^D on an empty line) ends the shell, and the guest then ends as `fake.end`
says (default: power off).

Four pieces, the first three pure (bytes and strings in, effects out; no queues, no clock):

    Terminal     a serial tty in canonical mode with ECHO, ICRNL and ONLCR: CR and LF both
                 end a line and echo as "\\r\\n"; DEL/^H erase a character, ^U the line,
                 ^C drops it (status 130), ^D on an empty line ends the shell
    Interpreter  one line -> effects: `;`, `&&` and `||` lists; words with single quotes,
                 double quotes and backslash escapes; `$?`; `#` comments; builtins echo [-n],
                 true, false, exit [N], uname [-snrvma], cat [FILE...] (/proc/cmdline, files
                 the channel put, stdin the channel gave), head -c N FILE (and /dev/zero),
                 poweroff [-f], sleep N (at most SLEEP_MAX s), lh-garbage TEXT (TEXT past the
                 channel's framing); any other name is `sh: NAME: not found`, 127 (on stderr).
                 Syntax it does not have (pipes, redirections, other `$` forms, subshells,
                 backquotes) is refused as a whole line with status 2, never half-run.
    FakeAgent    lh-agent's side of the command channel (harness.channel), entered when a
                 line is the channel's hello; `lhagent=console` on the command line makes the
                 shell announce it (harness.initramfs.AGENT_MARKER) before the ready marker
    serve()      the glue: runs the effects on the fake guest's console queues

FakeShell joins Terminal and Interpreter: feed(bytes) -> [Write, Sleep, PowerOff, Exit],
output already in "\\r\\n" form, a prompt after every line.
"""
from __future__ import annotations

import dataclasses
import re
import time
from typing import Iterator

from harness.channel import MAX_PAYLOAD, ProtocolError, encode_frame, encode_frames, parse_request, unb64
from harness.fakes.guest_events import Die, Pause
from harness.initramfs import AGENT_MARKER, AGENT_PARAM, PROMPT, READY_MARKER
from launcher.hypervisor.lguest import POWER_DOWN

RELEASE = "fake-lguest"
UNAME = {"s": "Linux", "n": "(none)", "r": RELEASE, "v": "#1 lguest-harness fake guest", "m": "x86_64"}
UNAME_ORDER = "snrvm"
SLEEP_MAX = 60.0            # seconds: a runaway test still ends
MAX_LINE = 4095             # N_TTY's canonical line limit, less the newline
NOT_FOUND = 127
SYNTAX = 2
INTERRUPTED = 130

CTRL_C, CTRL_D, BS, CTRL_U, DEL = 0x03, 0x04, 0x08, 0x15, 0x7F
ERASE = b"\b \b"


# -- effects ---------------------------------------------------------------------------------------

STDOUT, STDERR, RAW = 1, 2, 0      # RAW: straight onto the console, past the channel's framing


@dataclasses.dataclass(frozen=True)
class Write:
    data: bytes
    fd: int = STDOUT


@dataclasses.dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclasses.dataclass(frozen=True)
class PowerOff:
    pass


@dataclasses.dataclass(frozen=True)
class Exit:
    status: int


# -- the tty ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Line:
    text: str


@dataclasses.dataclass(frozen=True)
class Interrupt:
    pass


@dataclasses.dataclass(frozen=True)
class EndOfInput:
    pass


class Terminal:
    """Canonical-mode line discipline: feed(bytes) -> echo bytes and Line/Interrupt/EndOfInput, in order."""

    def __init__(self):
        self.line = bytearray()

    def feed(self, data: bytes) -> list:
        return [event for _, event in self.feed_events(data)]

    def feed_events(self, data: bytes) -> Iterator[tuple[int, object]]:
        """(offset in data just past the byte that made it, event), lazily: a caller may stop
        early (the channel's hello: the rest of data is no longer typed text)."""
        for at, byte in enumerate(data, 1):
            events: list = []
            self._byte(byte, events)
            for event in events:
                yield at, event

    def _byte(self, byte: int, events: list) -> None:
        if byte in (0x0D, 0x0A):                     # ICRNL: CR is NL
            events.append(b"\r\n")
            events.append(Line(self.line.decode("utf-8", "replace")))
            self.line.clear()
        elif byte in (DEL, BS):
            if self.line:
                self._erase_char()
                events.append(ERASE)
        elif byte == CTRL_U:
            if self.line:
                events.append(ERASE * _chars(self.line))
                self.line.clear()
        elif byte == CTRL_C:
            events.append(b"^C\r\n")
            events.append(Interrupt())
            self.line.clear()
        elif byte == CTRL_D:
            if not self.line:
                events.append(EndOfInput())
        elif len(self.line) < MAX_LINE:
            self.line.append(byte)
            events.append(bytes([byte]))

    def _erase_char(self) -> None:
        """Drop the last character, all of its UTF-8 bytes."""
        while self.line and self.line[-1] & 0xC0 == 0x80:
            self.line.pop()
        if self.line:
            self.line.pop()


def _chars(line: bytes) -> int:
    return sum(1 for b in line if b & 0xC0 != 0x80)


# -- parsing ---------------------------------------------------------------------------------------

class ShellSyntaxError(Exception):
    """The line uses syntax the fake shell does not have; nothing on it runs."""


STATUS = object()           # a `$?` inside a word, expanded when its command runs
OPERATORS = (";", "&&", "||")
UNSUPPORTED = {"|": "pipes", "&": "background jobs", "<": "redirections", ">": "redirections",
               "(": "subshells", ")": "subshells", "`": "command substitution"}


def parse(line: str) -> list[tuple[str, list[list]]]:
    """A line -> [(operator before it, words)]; each word is a list of str and STATUS parts."""
    commands: list[tuple[str, list[list]]] = []
    words: list[list] = []
    op = ";"
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if c in " \t":
            i += 1
        elif c == "#":
            break
        elif c == ";" or line.startswith(("&&", "||"), i):
            token = c if c == ";" else line[i:i + 2]
            if not words:
                raise ShellSyntaxError(f'unexpected "{token}"')
            commands.append((op, words))
            words, op = [], token
            i += len(token)
        elif c in UNSUPPORTED:
            raise ShellSyntaxError(f"{UNSUPPORTED[c]} ({c!r}) are not supported by the fake shell")
        else:
            word, i = _word(line, i)
            words.append(word)
    if words:
        commands.append((op, words))
    elif op != ";":
        raise ShellSyntaxError(f'unexpected end of line after "{op}"')
    return commands


def _word(line: str, i: int) -> tuple[list, int]:
    parts: list = []
    n = len(line)
    while i < n and line[i] not in " \t;" and not line.startswith(("&&", "||"), i):
        c = line[i]
        if c in UNSUPPORTED:
            raise ShellSyntaxError(f"{UNSUPPORTED[c]} ({c!r}) are not supported by the fake shell")
        if c == "'":
            end = line.find("'", i + 1)
            if end < 0:
                raise ShellSyntaxError("unterminated quoted string")
            parts.append(line[i + 1:end])
            i = end + 1
        elif c == '"':
            i = _double_quoted(line, i + 1, parts)
        elif c == "\\":
            if i + 1 >= n:
                raise ShellSyntaxError("a backslash at the end of the line (continuation) is not supported")
            parts.append(line[i + 1])
            i += 2
        elif c == "$":
            i = _dollar(line, i, parts)
        else:
            parts.append(c)
            i += 1
    return parts, i


def _double_quoted(line: str, i: int, parts: list) -> int:
    """Inside "...": \\ escapes \\ " $ and `; $? expands; returns the index after the closing quote."""
    n = len(line)
    parts.append("")            # "" is a word even when empty
    while i < n:
        c = line[i]
        if c == '"':
            return i + 1
        if c == "\\" and i + 1 < n and line[i + 1] in '\\"$`':
            parts.append(line[i + 1])
            i += 2
        elif c == "$":
            i = _dollar(line, i, parts)
        elif c == "`":
            raise ShellSyntaxError("command substitution ('`') is not supported by the fake shell")
        else:
            parts.append(c)
            i += 1
    raise ShellSyntaxError("unterminated quoted string")


def _dollar(line: str, i: int, parts: list) -> int:
    nxt = line[i + 1] if i + 1 < len(line) else ""
    if nxt == "?":
        parts.append(STATUS)
        return i + 2
    if nxt == "" or nxt in " \t\"'":
        parts.append("$")       # a lone $ is literal, as in sh
        return i + 1
    raise ShellSyntaxError(f"${nxt}... is not supported by the fake shell (only $? is expanded)")


# -- running ---------------------------------------------------------------------------------------

class Interpreter:
    """Runs one line at a time; `status` is $?.  `cmdline` is what /proc/cmdline holds."""

    def __init__(self, cmdline: str = "", release: str = RELEASE):
        self.cmdline = cmdline
        self.uname = dict(UNAME, r=release)
        self.status = 0
        self.files: dict[str, bytes] = {}
        self.stdin: bytes | None = None     # the running command's stdin, when the channel gave one
        self.builtins = {"lh-garbage": self._garbage, "head": self._head, "echo": self._echo, "true": lambda args: ([], 0), "false": lambda args: ([], 1),
                         "exit": self._exit, "uname": self._uname, "cat": self._cat,
                         "poweroff": self._poweroff, "sleep": self._sleep}

    def run_line(self, line: str) -> list:
        """Effects of one line, output with "\\n" line ends; stops after PowerOff or Exit."""
        try:
            commands = parse(line)
        except ShellSyntaxError as err:
            self.status = SYNTAX
            return [Write(f"sh: syntax error: {err}\n".encode(), STDERR)]
        effects: list = []
        for op, words in commands:
            if (op == "&&" and self.status != 0) or (op == "||" and self.status == 0):
                continue
            argv = ["".join(str(self.status) if p is STATUS else p for p in word) for word in words]
            out, self.status = self.run_command(argv)
            effects += out
            if out and isinstance(out[-1], (PowerOff, Exit)):
                break
        return effects

    def run_command(self, argv: list[str]) -> tuple[list, int]:
        builtin = self.builtins.get(argv[0])
        if builtin is None:
            return [Write(f"sh: {argv[0]}: not found\n".encode(), STDERR)], NOT_FOUND
        return builtin(argv[1:])

    # -- builtins -------------------------------------------------------------------------------------
    @staticmethod
    def _echo(args: list[str]):
        newline = "\n"
        if args[:1] == ["-n"]:
            args, newline = args[1:], ""
        return [Write((" ".join(args) + newline).encode())], 0

    def _exit(self, args: list[str]):
        if not args:
            return [Exit(self.status)], self.status
        try:
            status = int(args[0]) & 0xFF
        except ValueError:
            return [Write(f"sh: exit: Illegal number: {args[0]}\n".encode(), STDERR)], SYNTAX
        return [Exit(status)], status

    def _uname(self, args: list[str]):
        letters = ""
        for arg in args:
            if not arg.startswith("-") or len(arg) < 2 or set(arg[1:]) - set(UNAME_ORDER + "a"):
                return [Write(f"uname: invalid option {arg!r} (the fake shell has -snrvma)\n".encode(), STDERR)], 1
            letters += arg[1:]
        if "a" in letters:
            fields = [self.uname[k] for k in UNAME_ORDER] + ["GNU/Linux"]
        else:
            fields = [self.uname[k] for k in UNAME_ORDER if k in letters] or [self.uname["s"]]
        return [Write((" ".join(fields) + "\n").encode())], 0

    def _cat(self, args: list[str]):
        if not args:
            if self.stdin is None:
                return [Write(b"cat: reading standard input is not supported by the fake shell\n", STDERR)], 1
            return [Write(self.stdin)], 0
        out, status = [], 0
        for name in args:
            data = self.read_file(name)
            if data is not None:
                out.append(Write(data))
            else:
                out.append(Write(f"cat: can't open '{name}': No such file or directory\n".encode(), STDERR))
                status = 1
        return out, status

    def read_file(self, name: str) -> bytes | None:
        """The fake guest's files: /proc/cmdline and what the channel's put wrote."""
        if name == "/proc/cmdline":
            return (self.cmdline + "\n").encode()
        return self.files.get(name)

    def _head(self, args: list[str]):
        """head -c N FILE: the first N bytes of FILE (/dev/zero, or a file the channel put)."""
        if len(args) != 3 or args[0] != "-c" or not args[1].isdigit():
            return [Write(b"head: the fake shell has only head -c N FILE\n", STDERR)], 1
        count, name = int(args[1]), args[2]
        data = bytes(count) if name == "/dev/zero" else self.read_file(name)
        if data is None:
            return [Write(f"head: {name}: No such file or directory\n".encode(), STDERR)], 1
        return [Write(data[:count])], 0

    @staticmethod
    def _garbage(args: list[str]):
        """lh-garbage TEXT: TEXT straight onto the console, past the channel's framing (the test of
        a guest that writes garbage into the channel)."""
        return [Write(" ".join(args).encode(), RAW)], 0

    @staticmethod
    def _poweroff(args: list[str]):
        if any(arg != "-f" for arg in args):
            return [Write(b"poweroff: the fake shell only has poweroff [-f]\n", STDERR)], 1
        return [PowerOff()], 0

    @staticmethod
    def _sleep(args: list[str]):
        try:
            if len(args) != 1:
                raise ValueError
            seconds = float(args[0])
            if not 0 <= seconds <= SLEEP_MAX:
                raise ValueError
        except ValueError:
            return [Write(f"sleep: usage: sleep SECONDS (0 to {SLEEP_MAX:g} in the fake shell)\n".encode(), STDERR)], 1
        return [Sleep(seconds)], 0


# -- tty + interpreter -----------------------------------------------------------------------------

# -- the command channel (harness.channel), as lh-agent speaks it ---------------------------------

FREE_MEMORY = 48 << 20      # what a put may use, less the files already put
HELLO = re.compile(r"H [0-9a-f]{1,64}\Z")


class FakeAgent:
    """lh-agent's protocol on the fake console: feed(host bytes) -> effects (frames as RAW
    writes, Sleep, PowerOff).  Commands run in the Interpreter (its files and $? carry over);
    a command with stdin runs once all of it (Z) has come."""

    def __init__(self, interpreter: Interpreter):
        self.interpreter = interpreter
        self.pending = bytearray()
        self.command: tuple[int, str] | None = None     # waiting for its stdin
        self.stdin = bytearray()
        self.put: dict | None = None

    @staticmethod
    def frame(kind: str, ident: int, payload: bytes = b"") -> Write:
        return Write(encode_frames(kind, ident, payload), RAW)

    def feed(self, data: bytes) -> list:
        self.pending += data
        effects: list = []
        while (end := self.pending.find(b"\n")) >= 0:
            line = bytes(self.pending[:end])
            del self.pending[:end + 1]
            effects += self.request(line)
            if effects and isinstance(effects[-1], PowerOff):
                break
        return effects

    def request(self, line: bytes) -> list:
        try:
            kind, fields = parse_request(line)
            return self._dispatch(kind, fields)
        except (ProtocolError, ValueError, IndexError) as err:
            return [self.frame("P", 0, f"fake agent: {err}: {line[:80]!r}".encode())]

    def _dispatch(self, kind: str, fields: list[str]) -> list:
        ident = int(fields[0]) if fields and kind != "H" else 0
        if kind == "H":
            self.command, self.put = None, None
            return [self.frame("H", 0, f"{fields[0]} 1".encode())]
        if kind == "C":
            command = unb64(fields[1]).decode("utf-8", "replace")
            if fields[2] == "i":
                self.command, self.stdin = (ident, command), bytearray()
                return []
            return self.run(ident, command, None)
        if kind in "ID" and self.put is not None and self.put["id"] == ident:
            return self._put_data(unb64(fields[1]))
        if kind == "I" and self.command and self.command[0] == ident:
            self.stdin += unb64(fields[1])
            return []
        if kind == "Z" and self.put is not None and self.put["id"] == ident:
            return self._put_end()
        if kind == "Z" and self.command and self.command[0] == ident:
            (ident, command), self.command = self.command, None
            return self.run(ident, command, bytes(self.stdin))
        if kind == "K" or kind in "IDZ":
            return []               # a request that already ended
        if kind == "P":
            return self._put_begin(ident, unb64(fields[1]).decode(), int(fields[2]))
        if kind == "G":
            return self._get(ident, unb64(fields[1]).decode())
        raise ProtocolError(f"unknown request {kind!r}")

    def run(self, ident: int, command: str, stdin: bytes | None) -> list:
        interp = self.interpreter
        interp.stdin = stdin
        effects: list = []
        try:
            for line in command.split("\n"):
                for effect in interp.run_line(line):
                    if isinstance(effect, Write):
                        kind = {STDOUT: "O", STDERR: "E"}.get(effect.fd)
                        effects.append(self.frame(kind, ident, effect.data) if kind and effect.data else effect)
                    elif isinstance(effect, Exit):
                        interp.status = 0                 # lh-agent starts a new shell
                        return effects + [self.frame("X", ident, str(effect.status).encode())]
                    else:
                        effects.append(effect)
                        if isinstance(effect, PowerOff):
                            return effects
        finally:
            interp.stdin = None
        return effects + [self.frame("X", ident, str(interp.status).encode())]

    def _used(self) -> int:
        return sum(len(data) for data in self.interpreter.files.values())

    def _put_begin(self, ident: int, path: str, size: int) -> list:
        free = FREE_MEMORY - self._used() + len(self.interpreter.files.get(path, b""))
        if size > free:
            self.put = None             # refused before any data: the host sends none
            return [self.frame("F", ident, f"no room for {size} bytes in guest memory: {free} bytes free".encode())]
        if path.endswith("/") or path.startswith("/proc/"):
            self.put = None
            return [self.frame("F", ident, f"{path}: Is a directory or not writable".encode())]
        self.put = {"id": ident, "path": path, "size": size, "data": bytearray(), "failed": False}
        return [self.frame("A", ident)]

    def _put_data(self, data: bytes) -> list:
        put = self.put
        if put["failed"]:
            return []
        put["data"] += data
        if len(put["data"]) > put["size"]:
            put["failed"] = True
            return [self.frame("F", put["id"], f"more data than the {put['size']} bytes announced".encode())]
        return []

    def _put_end(self) -> list:
        put, self.put = self.put, None
        if put["failed"]:
            return []
        if len(put["data"]) != put["size"]:
            return [self.frame("F", put["id"], f"got {len(put['data'])} of {put['size']} bytes".encode())]
        self.interpreter.files[put["path"]] = bytes(put["data"])
        return [self.frame("X", put["id"], b"0")]

    def _get(self, ident: int, path: str) -> list:
        data = self.interpreter.read_file(path)
        if data is None:
            return [self.frame("F", ident, f"{path}: No such file or directory".encode())]
        frames = [encode_frame("S", ident, str(len(data)).encode())]
        frames += [encode_frame("D", ident, data[at:at + MAX_PAYLOAD]) for at in range(0, len(data), MAX_PAYLOAD)]
        frames.append(encode_frame("X", ident, b"0"))
        return [Write(b"".join(frames), RAW)]


class FakeShell:
    """feed(bytes from the host) -> effects; output in tty form ("\\r\\n"), a prompt after each line.
    A line `H <nonce>` (the channel's hello) turns it into lh-agent (FakeAgent) for good."""

    def __init__(self, cmdline: str = "", release: str = RELEASE, prompt: str = PROMPT):
        self.terminal = Terminal()
        self.interpreter = Interpreter(cmdline, release)
        self.prompt = prompt.encode()
        self.ended = False
        self.agent: FakeAgent | None = None
        self.announce_agent = f"{AGENT_PARAM}=console" in cmdline.split()

    @property
    def status(self) -> int:
        return self.interpreter.status

    def start(self) -> list:
        """What /init prints before the shell reads anything: the ready marker, then a prompt."""
        agent = f"{AGENT_MARKER}console\n" if self.announce_agent else ""
        return [Write(_onlcr(f"{agent}{READY_MARKER}\n".encode()) + self.prompt)]

    def feed(self, data: bytes) -> list:
        if self.agent is not None:
            return self.agent.feed(data)
        effects: list = []
        for at, event in self.terminal.feed_events(data):
            if self.ended:
                break
            if isinstance(event, bytes):
                effects.append(Write(event))
            elif isinstance(event, Line) and HELLO.match(event.text):
                self.agent = FakeAgent(self.interpreter)
                effects += self.agent.feed(event.text.encode() + b"\n" + data[at:])
                break
            elif isinstance(event, Line):
                effects += self._line(event.text)
            elif isinstance(event, Interrupt):
                self.interpreter.status = INTERRUPTED
                effects.append(Write(self.prompt))
            elif isinstance(event, EndOfInput):
                effects += [Write(b"exit\r\n"), Exit(self.status)]
                self.ended = True
        return _coalesce(effects)

    def _line(self, text: str) -> list:
        effects = []
        for effect in self.interpreter.run_line(text):
            effects.append(Write(_onlcr(effect.data)) if isinstance(effect, Write) else effect)
            if isinstance(effect, (PowerOff, Exit)):
                self.ended = True
                return effects
        return effects + [Write(self.prompt)]


def _onlcr(data: bytes) -> bytes:
    return data.replace(b"\n", b"\r\n")


def _coalesce(effects: list) -> list:
    out: list = []
    for effect in effects:
        if isinstance(effect, Write) and out and isinstance(out[-1], Write):
            out[-1] = Write(out[-1].data + effect.data)
        else:
            out.append(effect)
    return out


# -- glue to the fake guest's console ----------------------------------------------------------------

RECEIVEQ = 0                # the console's queue 0 carries host input; console_write uses queue 1
RX_BUFFER = 8192            # the fake guest's arena holds 16 KiB per queue
TX_CHUNK = 8192


def serve(guest, console) -> Iterator:
    """Run the shell on `console` (a FoundDevice past DRIVER_OK) of the fake lguest guest.

    A generator for FakeLguestGuest.run: returns the event that ends the run (power-off), or
    None when the shell exited and the guest's scripted ending should follow."""
    shell = FakeShell(cmdline=guest.cmdline)
    effects = shell.start()
    while True:
        for effect in effects:
            if isinstance(effect, Write):
                for at in range(0, len(effect.data), TX_CHUNK):
                    yield from guest.console_write(console, effect.data[at:at + TX_CHUNK])
            elif isinstance(effect, Sleep):
                yield from _sleep(guest.host, effect.seconds)
            elif isinstance(effect, PowerOff):
                guest.log.append("fake shell: poweroff")
                return Die(POWER_DOWN)
            elif isinstance(effect, Exit):
                guest.log.append(f"fake shell: exit {effect.status}")
                guest.results["shell_exit"] = effect.status
                return None
        data = yield from _receive(guest, console)
        effects = shell.feed(data)


def _receive(guest, console) -> Iterator:
    """One buffer of host input from the receiveq (one buffer posted at a time)."""
    rx, irq = console.drivers[RECEIVEQ], console.queues[RECEIVEQ][1]
    if rx.num_free == rx.size:                  # nothing posted (fake.console_rx used it)
        rx.add([], [RX_BUFFER])
        yield from guest.kick(console, RECEIVEQ)
    while rx.used_idx == rx.last_used_idx:     # waits as long as the host says nothing
        if guest.host.break_pending:
            yield Pause()
            continue
        guest.host.wait_irq(0.05)
    guest.host.wait_for_irq(irq, guest.options.timeout, "console receiveq")
    (_head, _length, data), = rx.reap()
    rx.add([], [RX_BUFFER])
    yield from guest.kick(console, RECEIVEQ)
    return data


def _sleep(host, seconds: float) -> Iterator:
    """Sleep in the guest; the Launcher can still break out (--timeout, SIGTERM)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if host.break_pending:
            yield Pause()
            continue
        host.wait_irq(min(left, 0.05))
