"""The command channel: guest commands, their stdin, stdout, stderr and exit status, and files,
over the virtio console instead of typed on the 8250.

The guest side is lh-agent (harness/lh_agent.c, in the harness's initramfs, on /dev/hvc0) or,
on the fake backend, harness.fakes.fake_shell on the fake guest's console.  Both speak:

    host -> guest   text lines of printable ASCII (no tty, console device or ^C detector can
                    eat or turn a byte), payloads in base64 ("-" when empty):
                        H nonce | C id cmd i|n | I id data | Z id | K id
                        P id path size mode | D id data | G id path
    guest -> host   binary frames: b"\\0LH", a type byte, u32 id, u32 length, u32 CRC-32 of the
                    first 12 header bytes and the payload, then the payload (<= MAX_PAYLOAD)
                        R ready  H hello  O stdout  E stderr  X exit status  A put accepted
                        F failed  S get size  D get data  L log  P the guest's protocol error

One request at a time, each with its own id: a frame with another id, a bad CRC, an unknown
type or a bad magic is a ProtocolError (never output given to the wrong command); the channel
then resynchronises with a fresh hello (whose nonce no stale frame can carry) before the next
request.  Flow control: the host reads whatever the guest sends while it writes, and a put
waits for the guest's A before its data, so neither side can block the other for good.
"""
from __future__ import annotations

import base64
import os
import secrets
import select
import struct
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterable

MAGIC = b"\0LH"
HEADER = struct.Struct("<3scIII")        # magic, type, id, length, crc
MAX_PAYLOAD = 65536
FRAME_TYPES = frozenset(b"RHOEXAFSDLP")
DATA_CHUNK = 48 * 1024                   # raw bytes per I/D line (64 KiB of base64)
MAX_COMMAND = 96 * 1024
KILL_GRACE = 30.0                        # seconds for the guest to answer a kill
VERSION = "1"


class ChannelError(Exception):
    """The channel failed; Guest turns these into GuestError with the console's tail."""


class ProtocolError(ChannelError):
    """The guest sent something that is not a valid frame for the request in progress."""


class ChannelTimeout(ChannelError):
    def __init__(self, message: str, stdout: bytes = b"", stderr: bytes = b"", killed: bool = False):
        super().__init__(message)
        self.stdout, self.stderr, self.killed = stdout, stderr, killed


class ChannelClosed(ChannelError):
    """The guest end is gone (launcher exited, agent died, or it did not answer a kill)."""


class RemoteError(ChannelError):
    """The guest refused or failed a request (an F frame): no such file, no space, ..."""


@dataclass(frozen=True)
class Frame:
    kind: str
    ident: int
    payload: bytes


# -- the codec ---------------------------------------------------------------------------------

def encode_frame(kind: str, ident: int, payload: bytes = b"") -> bytes:
    """One guest -> host frame (the agent's side, in Python: the fake shell and the tests)."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes > {MAX_PAYLOAD}")
    head = HEADER.pack(MAGIC, kind.encode(), ident, len(payload), 0)[:12]
    crc = zlib.crc32(payload, zlib.crc32(head))
    return head + struct.pack("<I", crc) + payload


def encode_frames(kind: str, ident: int, payload: bytes) -> bytes:
    """payload split into as many frames as MAX_PAYLOAD needs (one, empty, for b"")."""
    if not payload:
        return encode_frame(kind, ident)
    return b"".join(encode_frame(kind, ident, payload[at:at + MAX_PAYLOAD])
                    for at in range(0, len(payload), MAX_PAYLOAD))


class FrameDecoder:
    """feed(bytes) -> complete frames; a malformed one raises ProtocolError.  With
    skip_junk, bytes that do not start a valid frame are dropped instead (for a hello)."""

    def __init__(self):
        self.buffer = bytearray()
        self.skipped = 0

    def feed(self, data: bytes, skip_junk: bool = False) -> list[Frame]:
        self.buffer += data
        frames = []
        while True:
            if skip_junk:
                self._skip_to_magic()
            if len(self.buffer) < HEADER.size:
                if not skip_junk and self.buffer and not MAGIC.startswith(bytes(self.buffer[:3])):
                    raise ProtocolError(f"not a frame: {self._excerpt()}")
                return frames
            magic, kind, ident, length, crc = HEADER.unpack_from(self.buffer)
            problem = None
            if magic != MAGIC:
                problem = "bad magic"
            elif kind[0] not in FRAME_TYPES:
                problem = f"unknown frame type {kind!r}"
            elif length > MAX_PAYLOAD:
                problem = f"frame length {length} > {MAX_PAYLOAD}"
            if problem is None and len(self.buffer) < HEADER.size + length:
                return frames
            if problem is None:
                payload = bytes(self.buffer[HEADER.size:HEADER.size + length])
                if zlib.crc32(payload, zlib.crc32(self.buffer[:12])) != crc:
                    problem = "bad CRC"
            if problem is not None:
                if skip_junk:
                    del self.buffer[0]
                    self.skipped += 1
                    continue
                raise ProtocolError(f"{problem}: {self._excerpt()}")
            del self.buffer[:HEADER.size + length]
            frames.append(Frame(kind.decode(), ident, payload))

    def _skip_to_magic(self) -> None:
        at = self.buffer.find(MAGIC)
        if at < 0:      # keep a tail that may be the start of the magic
            keep = 2 if self.buffer.endswith(MAGIC[:2]) else 1 if self.buffer.endswith(MAGIC[:1]) else 0
            at = len(self.buffer) - keep
        self.skipped += at
        del self.buffer[:at]

    def _excerpt(self) -> str:
        return repr(bytes(self.buffer[:48]))

    def reset(self) -> None:
        self.buffer.clear()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode() if data else "-"


def unb64(text: str) -> bytes:
    return b"" if text == "-" else base64.b64decode(text, validate=True)


def request_line(kind: str, *fields) -> bytes:
    """One host -> guest line; bytes fields are base64-encoded."""
    parts = [kind] + [b64(f) if isinstance(f, (bytes, bytearray)) else str(f) for f in fields]
    return (" ".join(parts) + "\n").encode("ascii")


def parse_request(line: bytes) -> tuple[str, list[str]]:
    """A host line (without its newline) -> (kind, fields): the guest's view, for the fake shell."""
    try:
        words = line.decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProtocolError(f"not ASCII: {line[:48]!r}") from None
    if not words or len(words[0]) != 1:
        raise ProtocolError(f"not a request: {line[:48]!r}")
    return words[0], words[1:]


# -- the host side ---------------------------------------------------------------------------------

@dataclass
class Output:
    """What a command printed, in arrival order (stdout and stderr interleaved as frames came)."""
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    chunks: list = field(default_factory=list)

    def add(self, stream: str, data: bytes) -> None:
        (self.stdout if stream == "O" else self.stderr).extend(data)
        self.chunks.append(data)

    def combined(self) -> bytes:
        return b"".join(self.chunks)


class Channel:
    """The host end on a file descriptor (the hvc0 pty, or the fake guest's console).

    `others` maps more file descriptors to callbacks run when they are readable while the
    channel waits (the 8250 console, so its log keeps flowing and the guest never blocks on
    it).  `log` receives the guest's L frames (the agent's and its shell's diagnostics)."""

    def __init__(self, fd: int, *, others: dict[int, Callable[[], None]] | None = None,
                 log: Callable[[bytes], None] = lambda data: None):
        self.fd = fd
        self.others = dict(others or {})
        self.log = log
        self.decoder = FrameDecoder()
        self.frames: list[Frame] = []
        self.next_id = 1
        self.needs_resync = False
        self.dead: str | None = None

    # -- plumbing ---------------------------------------------------------------------------
    def _poll(self, deadline: float, want_write: bool = False) -> bool:
        """Wait until the fd is writable (want_write) or frames arrived; read what came.
        Returns whether the fd is writable."""
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        readers = [self.fd, *self.others]
        readable, writable, _ = select.select(readers, [self.fd] if want_write else [], [], left)
        for fd in readable:
            if fd == self.fd:
                self._read()
            else:
                self.others[fd]()
        return bool(writable)

    def _read(self, skip_junk: bool = False) -> None:
        try:
            data = os.read(self.fd, 1 << 18)
        except BlockingIOError:
            return
        except OSError as err:
            self._die(f"reading the channel: {err}")
        if not data:
            self._die("the channel closed (EOF)")
        try:
            frames = self.decoder.feed(data, skip_junk=skip_junk)
        except ProtocolError:
            self.needs_resync = True
            raise
        for frame in frames:
            if frame.kind == "L":
                self.log(frame.payload)
            elif frame.kind == "P":
                self.needs_resync = True
                raise ProtocolError(f"the guest agent says: {frame.payload.decode(errors='replace')}")
            else:
                self.frames.append(frame)

    def _die(self, why: str):
        self.dead = why
        raise ChannelClosed(why)

    def _send(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            if not self._poll(deadline, want_write=True):
                if time.monotonic() >= deadline:
                    raise ChannelTimeout("timed out sending to the guest")
                continue
            try:
                view = view[os.write(self.fd, view):]
            except BlockingIOError:
                pass
            except OSError as err:
                self._die(f"writing the channel: {err}")

    def _next_frame(self, ident: int, deadline: float) -> Frame | None:
        """The next frame of request ident, or None at the deadline; another id is an error."""
        while not self.frames:
            if time.monotonic() >= deadline:
                return None
            self._poll(deadline)
        frame = self.frames.pop(0)
        if frame.ident != ident:
            self.needs_resync = True
            raise ProtocolError(f"a {frame.kind!r} frame for request {frame.ident} during request {ident}: "
                                f"{frame.payload[:48]!r}")
        return frame

    def _begin(self) -> int:
        if self.dead:
            raise ChannelClosed(f"the channel is dead: {self.dead}")
        if self.needs_resync:
            self.hello(timeout=KILL_GRACE)
        ident, self.next_id = self.next_id, self.next_id + 1
        return ident

    # -- requests --------------------------------------------------------------------------------
    def wait_ready(self, timeout: float) -> None:
        """Wait for the agent's R frame (it comes once, when the agent starts)."""
        deadline = time.monotonic() + timeout
        while not any(f.kind == "R" for f in self.frames):
            if time.monotonic() >= deadline:
                raise ChannelTimeout(f"no ready frame from the guest agent in {timeout:g} s")
            self._poll_junk(deadline)
        self.frames = [f for f in self.frames if f.kind != "R"]

    def _poll_junk(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        readable, _, _ = select.select([self.fd, *self.others], [], [], max(left, 0))
        for fd in readable:
            if fd == self.fd:
                self._read(skip_junk=True)
            else:
                self.others[fd]()

    def hello(self, timeout: float = 30) -> None:
        """Say hello with a fresh nonce and drop everything until the answer: the way in, and the
        way back after a protocol error or a kill."""
        deadline = time.monotonic() + timeout
        nonce = secrets.token_hex(8)
        self.decoder.reset()
        self.frames.clear()
        self._send(request_line("H", nonce), deadline)
        want = f"{nonce} {VERSION}".encode()
        while True:
            while self.frames:
                frame = self.frames.pop(0)
                if frame.kind == "H" and frame.payload == want:
                    self.frames.clear()
                    self.needs_resync = False
                    return
            if time.monotonic() >= deadline:
                self._die(f"no answer to hello in {timeout:g} s")
            self._poll_junk(deadline)

    def run(self, command: str, timeout: float, input: bytes | None = None) -> tuple[bytes, bytes, int, bytes]:
        """(stdout, stderr, status, combined) of one shell command in the guest."""
        encoded = command.encode()
        if len(encoded) > MAX_COMMAND:
            raise ValueError(f"command of {len(encoded)} bytes; the channel takes at most {MAX_COMMAND}")
        ident = self._begin()
        deadline = time.monotonic() + timeout
        out = Output()
        self._send(request_line("C", ident, encoded, "n" if input is None else "i"), deadline)
        if input is not None:
            for at in range(0, len(input), DATA_CHUNK):
                self._send(request_line("I", ident, input[at:at + DATA_CHUNK]), deadline)
                self._collect(ident, out)
            self._send(request_line("Z", ident), deadline)
        while True:
            frame = self._next_frame(ident, deadline)
            if frame is None:
                return self._kill(ident, out, timeout)
            if frame.kind in "OE":
                out.add(frame.kind, frame.payload)
            elif frame.kind == "X":
                return bytes(out.stdout), bytes(out.stderr), int(frame.payload), out.combined()
            elif frame.kind == "F":
                raise RemoteError(frame.payload.decode(errors="replace"))
            else:
                self._unexpected(frame, ident)

    def _collect(self, ident: int, out: Output) -> None:
        while self.frames:
            frame = self._next_frame(ident, time.monotonic())
            if frame.kind in "OE":
                out.add(frame.kind, frame.payload)
            else:           # an early end (X) or failure: keep it for the caller's loop
                self.frames.insert(0, frame)
                return

    def _kill(self, ident: int, out: Output, timeout: float):
        """After a timeout: kill the command and wait for its end.  The guest stays usable, or
        is declared dead (every later request refused) -- never a silent hang."""
        deadline = time.monotonic() + KILL_GRACE
        try:
            self._send(request_line("K", ident), deadline)
            while True:
                frame = self._next_frame(ident, deadline)
                if frame is None:
                    self.dead = f"no answer to a kill within {KILL_GRACE:g} s"
                    raise ChannelTimeout(f"timed out after {timeout:g} s; the guest did not answer a kill "
                                         f"within {KILL_GRACE:g} s and is declared dead",
                                         bytes(out.stdout), bytes(out.stderr))
                if frame.kind in "OE":
                    out.add(frame.kind, frame.payload)
                elif frame.kind in "XF":
                    raise ChannelTimeout(f"timed out after {timeout:g} s; the command was killed "
                                         f"(exit {frame.payload.decode(errors='replace')}), the guest is usable",
                                         bytes(out.stdout), bytes(out.stderr), killed=True)
        except ChannelClosed as err:
            raise ChannelTimeout(f"timed out after {timeout:g} s, and then {err}: the guest is dead",
                                 bytes(out.stdout), bytes(out.stderr)) from err

    def _unexpected(self, frame: Frame, ident: int):
        self.needs_resync = True
        raise ProtocolError(f"unexpected {frame.kind!r} frame for request {ident}: {frame.payload[:48]!r}")

    def put(self, chunks: Iterable[bytes], size: int, remote: str, mode: int, timeout: float) -> None:
        """Write size bytes (from chunks of at most DATA_CHUNK) to the guest's file remote."""
        ident = self._begin()
        deadline = time.monotonic() + timeout
        self._send(request_line("P", ident, remote.encode(), size, f"{mode:o}"), deadline)
        frame = self._wait(ident, deadline, "put")
        if frame.kind == "F":
            raise RemoteError(f"put {remote}: {frame.payload.decode(errors='replace')}")
        if frame.kind != "A":
            self._unexpected(frame, ident)
        sent = 0
        for chunk in chunks:
            self._send(request_line("D", ident, chunk), deadline)
            sent += len(chunk)
            if self.frames:         # the guest failed early: stop sending
                break
        self._send(request_line("Z", ident), deadline)
        frame = self._wait(ident, deadline, "put")
        if frame.kind == "F":
            raise RemoteError(f"put {remote}: {frame.payload.decode(errors='replace')}")
        if frame.kind != "X" or sent != size:
            self._unexpected(frame, ident)

    def get(self, remote: str, sink: Callable[[bytes], None], timeout: float) -> int:
        """Stream the guest's file remote into sink; returns its length."""
        ident = self._begin()
        deadline = time.monotonic() + timeout
        self._send(request_line("G", ident, remote.encode()), deadline)
        frame = self._wait(ident, deadline, "get")
        if frame.kind == "F":
            raise RemoteError(f"get {remote}: {frame.payload.decode(errors='replace')}")
        if frame.kind != "S":
            self._unexpected(frame, ident)
        expected, got = int(frame.payload), 0
        while True:
            frame = self._wait(ident, deadline, "get")
            if frame.kind == "D":
                sink(frame.payload)
                got += len(frame.payload)
            elif frame.kind == "X":
                break
            elif frame.kind == "F":
                raise RemoteError(f"get {remote}: {frame.payload.decode(errors='replace')}")
            else:
                self._unexpected(frame, ident)
        if expected >= 0 and got != expected:
            raise ProtocolError(f"get {remote}: {got} bytes arrived, the guest announced {expected}")
        return got

    def _wait(self, ident: int, deadline: float, what: str) -> Frame:
        frame = self._next_frame(ident, deadline)
        if frame is None:
            self.needs_resync = True
            raise ChannelTimeout(f"{what}: no answer from the guest before the timeout")
        return frame

    def send_only(self, command: str) -> None:
        """Start a command and do not wait (poweroff: the answer is the launcher's exit)."""
        ident = self._begin()
        self._send(request_line("C", ident, command.encode(), "n"), time.monotonic() + 10)


def chunks_of(path, size: int = DATA_CHUNK):
    with open(path, "rb") as f:
        while chunk := f.read(size):
            yield chunk


__all__ = ["Channel", "ChannelError", "ChannelTimeout", "ChannelClosed", "ProtocolError", "RemoteError",
           "Frame", "FrameDecoder", "encode_frame", "encode_frames", "request_line", "parse_request",
           "b64", "unb64", "MAX_PAYLOAD", "DATA_CHUNK"]
