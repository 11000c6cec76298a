"""The command channel's frame codec and request lines (harness.channel), and the host end against
a scripted guest on a socketpair: framing, garbage, ids, timeouts -- no hypervisor needed."""
import os
import socket
import threading

import pytest
from hypothesis import given, strategies as st

from harness import channel as ch

frames = st.lists(st.tuples(st.sampled_from(sorted("RHOEXAFSDLP")), st.integers(0, 2**32 - 1),
                            st.binary(max_size=300)), max_size=8)


@given(frames, st.lists(st.integers(1, 64), max_size=20))
def test_frames_survive_any_split(items, cuts):
    wire = b"".join(ch.encode_frame(k, i, p) for k, i, p in items)
    decoder, got, at = ch.FrameDecoder(), [], 0
    for cut in cuts + [len(wire)]:
        got += decoder.feed(wire[at:at + cut])
        at += cut
    got += decoder.feed(wire[at:])
    assert [(f.kind, f.ident, f.payload) for f in got] == items


@given(st.binary(max_size=200_000))
def test_long_payloads_split_into_frames_and_join_back(data):
    got = ch.FrameDecoder().feed(ch.encode_frames("O", 7, data))
    assert b"".join(f.payload for f in got) == data and all(len(f.payload) <= ch.MAX_PAYLOAD for f in got)


@given(st.binary(min_size=1, max_size=100).filter(lambda b: not ch.MAGIC.startswith(b[:3])))
def test_garbage_is_a_protocol_error_never_output(junk):
    with pytest.raises(ch.ProtocolError):
        ch.FrameDecoder().feed(junk + ch.encode_frame("O", 1, b"real output"))


@given(st.integers(0, 15), st.integers(0, 7))
def test_any_flipped_bit_is_caught(byte, bit):
    wire = bytearray(ch.encode_frame("O", 3, b"0123456789abcdef"))
    wire[byte if byte < 12 else 16 + byte] ^= 1 << bit
    with pytest.raises(ch.ProtocolError):
        decoder = ch.FrameDecoder()
        assert decoder.feed(bytes(wire)) == [] and decoder.feed(bytes(ch.MAX_PAYLOAD + 20)) == []


@given(st.binary(max_size=500), st.binary(max_size=50))
def test_a_hello_is_found_after_any_junk(junk, payload):
    decoder = ch.FrameDecoder()
    got = decoder.feed(junk + ch.encode_frame("H", 0, payload), skip_junk=True)
    assert got[-1] == ch.Frame("H", 0, payload)


@given(st.binary(max_size=100_000))
def test_request_lines_are_printable_ascii_and_round_trip(data):
    line = ch.request_line("D", 12, data)
    assert line.endswith(b"\n") and all(0x20 <= b < 0x7F for b in line[:-1])
    kind, fields = ch.parse_request(line[:-1])
    assert kind == "D" and fields[0] == "12" and ch.unb64(fields[1]) == data


# -- the host end against a scripted guest ---------------------------------------------------------

class ScriptedGuest:
    """The other end of a socketpair: answers each request line with what `answer` returns."""

    def __init__(self, answer):
        self.host, self.guest = socket.socketpair()
        self.host.setblocking(False)
        self.answer = answer
        self.lines = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        pending = b""
        try:
            while data := self.guest.recv(65536):
                pending += data
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    self.lines.append(line)
                    kind, fields = ch.parse_request(line)
                    self.guest.sendall(self.answer(kind, fields))
        except OSError:
            pass            # the test closed its end

    def channel(self):
        return ch.Channel(self.host.fileno())


def hello(kind, fields):
    return ch.encode_frame("H", 0, f"{fields[0]} 1".encode()) if kind == "H" else None


def test_run_keeps_stdout_stderr_and_status_apart():
    def answer(kind, fields):
        if kind == "C":
            ident = int(fields[0])
            return (ch.encode_frame("O", ident, b"out\n") + ch.encode_frame("E", ident, b"err\n")
                    + ch.encode_frame("O", ident, b"more") + ch.encode_frame("X", ident, b"3"))
        return b""
    channel = ScriptedGuest(answer).channel()
    assert channel.run("anything", timeout=5) == (b"out\nmore", b"err\n", 3, b"out\nerr\nmore")


def test_a_frame_for_another_request_is_a_protocol_error_and_the_next_request_resyncs():
    def answer(kind, fields):
        if kind == "H":
            return b"stale junk" + hello(kind, fields)
        ident = int(fields[0])
        if ident == 1:
            return ch.encode_frame("O", 99, b"not yours") + ch.encode_frame("X", ident, b"0")
        return ch.encode_frame("O", ident, b"mine") + ch.encode_frame("X", ident, b"0")
    channel = ScriptedGuest(answer).channel()
    with pytest.raises(ch.ProtocolError, match="request 99 during request 1"):
        channel.run("first", timeout=5)
    assert channel.run("second", timeout=5)[0] == b"mine"     # after a hello with a fresh nonce


def test_garbage_from_the_guest_is_reported_not_returned():
    channel = ScriptedGuest(lambda kind, fields: b"\x00LHO garbage that is no frame at all" * 2).channel()
    with pytest.raises(ch.ProtocolError, match="bad CRC|length|magic"):
        channel.run("x", timeout=5)


def test_a_timeout_kills_and_keeps_what_was_printed():
    def answer(kind, fields):
        ident = int(fields[0])
        if kind == "C":
            return ch.encode_frame("O", ident, b"started\n")
        if kind == "K":
            return ch.encode_frame("X", ident, b"k137")
        return b""
    guest = ScriptedGuest(answer)
    with pytest.raises(ch.ChannelTimeout, match="killed") as err:
        guest.channel().run("sleep forever", timeout=0.3)
    assert err.value.stdout == b"started\n" and err.value.killed
    assert guest.lines[-1] == b"K 1"


def test_a_guest_that_never_answers_the_kill_is_declared_dead(monkeypatch):
    monkeypatch.setattr(ch, "KILL_GRACE", 0.3)
    channel = ScriptedGuest(lambda kind, fields: b"").channel()
    with pytest.raises(ch.ChannelTimeout, match="declared dead"):
        channel.run("hang", timeout=0.2)
    with pytest.raises(ch.ChannelClosed, match="dead"):
        channel.run("anything", timeout=1)


def test_eof_is_channel_closed():
    guest = ScriptedGuest(lambda kind, fields: b"")
    guest.guest.close()
    with pytest.raises(ch.ChannelClosed):
        guest.channel().run("x", timeout=5)


def test_put_stops_when_the_guest_fails_and_reports_why():
    def answer(kind, fields):
        ident = int(fields[0])
        if kind == "P":
            return ch.encode_frame("A", ident)
        if kind == "D":
            return ch.encode_frame("F", ident, b"write: No space left on device")
        return b""
    guest = ScriptedGuest(answer)
    chunks = (bytes(ch.DATA_CHUNK) for _ in range(100))
    with pytest.raises(ch.RemoteError, match="No space"):
        guest.channel().put(chunks, 100 * ch.DATA_CHUNK, "/tmp/big", 0o644, timeout=10)
    assert sum(line.startswith(b"D ") for line in guest.lines) < 100


def test_get_checks_the_announced_size():
    def answer(kind, fields):
        ident = int(fields[0])
        return ch.encode_frame("S", ident, b"10") + ch.encode_frame("D", ident, b"12345") + ch.encode_frame("X", ident, b"0")
    with pytest.raises(ch.ProtocolError, match="5 bytes arrived"):
        ScriptedGuest(answer).channel().get("/f", lambda data: None, timeout=5)
