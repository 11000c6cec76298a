"""virtio-console (5.3) through the fake guest driver, and the host console backends."""
import os
import termios
import threading

import pexpect.fdpexpect
import pytest

from harness.fakes.backends import MemoryConsole
from harness.fakes.backends_bench import DeviceBench
from launcher.devices.base import WrongDirectionBuffers
from launcher.devices.console import RECEIVEQ, TRANSMITQ, AbortDetector, ConsoleDevice
from launcher.io.console_backends import FdConsole, PtyConsole, StdioConsole
from launcher.io.fdutil import writev_all

RAW_OFF = termios.ISIG | termios.ICANON | termios.ECHO


def console_bench(backend, threads=False, **kw):
    bench = DeviceBench(ConsoleDevice(backend, strict=kw.pop("strict", True), **kw), threads=threads)
    bench.negotiate()
    return bench


def test_echo_both_ways_threadless():
    host = MemoryConsole()
    with console_bench(host) as bench:
        rx, tx = bench.driver(RECEIVEQ), bench.driver(TRANSMITQ)
        rx.add([], [64])
        rx.kick()
        assert bench.process(RECEIVEQ) is False          # no input yet: the buffer waits
        host.feed(b"hello guest")
        assert bench.process(RECEIVEQ) is True
        assert rx.reap() == [(0, 11, b"hello guest")]
        tx.add([b"hello ", b"host"], [])
        tx.kick()
        bench.process(TRANSMITQ)
        assert tx.reap()[0][1] == 0
        assert bytes(host.output) == b"hello host"


def test_input_larger_than_buffer_is_split():
    host = MemoryConsole()
    with console_bench(host) as bench:
        rx = bench.driver(RECEIVEQ)
        rx.add([], [4])
        rx.add([], [4])
        rx.kick()
        host.feed(b"abcdefghij")
        bench.process(RECEIVEQ)
        assert [r[2] for r in rx.reap()] == [b"abcd", b"efgh"]
        rx.add([], [4])
        rx.kick()
        bench.process(RECEIVEQ)
        assert rx.reap()[0][2] == b"ij"


def test_echo_through_a_pty_with_pexpect():
    pty = PtyConsole()
    bench = console_bench(pty, threads=True)
    with bench:
        child = pexpect.fdpexpect.fdspawn(pty.peer_fd, timeout=5)
        tx, rx = bench.driver(TRANSMITQ), bench.driver(RECEIVEQ)
        tx.add([b"login: "], [])
        tx.kick()
        child.expect_exact("login: ")
        rx.add([], [128])
        rx.kick()
        child.send("root\n")
        [(_, n, typed)] = bench.wait_used(RECEIVEQ)
        assert typed == b"root\n"                       # raw pty: no echo, no \r mangling
        tx.add([b"echo:" + typed], [])                 # the "guest" echoes it back
        tx.kick()
        child.expect_exact("echo:root\n")
    assert bench.workers.errors == []


def test_three_ctrl_c_within_a_second_abort():
    now = [100.0]
    aborts = []
    host = MemoryConsole()
    with console_bench(host, on_abort=lambda: aborts.append(now[0]), clock=lambda: now[0]) as bench:
        rx = bench.driver(RECEIVEQ)

        def press(data, at):
            now[0] = at
            rx.add([], [16])
            rx.kick()
            host.feed(data)
            bench.process(RECEIVEQ)
            rx.reap()

        press(b"\x03", 100.0)
        press(b"\x03", 100.5)
        press(b"\x03", 102.0)                          # too slow: no abort
        assert aborts == []
        press(b"\x03", 103.0)
        press(b"x", 103.1)                             # anything else starts over
        press(b"\x03", 103.2)
        press(b"\x03", 103.3)
        assert aborts == []
        press(b"\x03", 103.9)
        assert aborts == [103.9]


def test_abort_detector_needs_lone_ctrl_c():
    det = AbortDetector(clock=lambda: 0.0)
    assert [det.feed(b"\x03\x03\x03")] == [False]
    assert [det.feed(b"\x03") for _ in range(3)] == [False, False, True]


def test_end_of_input_stops_reading_and_keeps_buffer():
    host = MemoryConsole()
    with console_bench(host) as bench:
        rx = bench.driver(RECEIVEQ)
        rx.add([], [8])
        rx.kick()
        host.end_input()
        bench.process(RECEIVEQ)
        assert bench.device.input_closed
        assert bench.device.input_fd(RECEIVEQ) is None
        assert rx.reap() == []


@pytest.mark.parametrize("queue,readable,writable", [(RECEIVEQ, [b"x"], [8]), (TRANSMITQ, [b"x"], [8])])
def test_wrong_direction_buffers(queue, readable, writable):
    host = MemoryConsole()
    host.feed(b"input")
    with console_bench(host, strict=False) as bench:
        drv = bench.driver(queue)
        drv.add(readable, writable)
        drv.kick()
        bench.process(queue)
        assert drv.reap()[0][1] == 0
        assert bench.device.metrics.guest_faults == 1
        assert host.output == b""
    with console_bench(MemoryConsole(), strict=True) as bench:
        bench.driver(queue).add(readable, writable)
        bench.driver(queue).kick()
        with pytest.raises(WrongDirectionBuffers):
            bench.process(queue)


def test_output_to_a_closed_host_is_dropped_not_fatal():
    r, w = os.pipe()
    os.close(r)
    backend = FdConsole(w, w, raw=False, owned_fds=(w,))
    with console_bench(backend, strict=False) as bench:
        tx = bench.driver(TRANSMITQ)
        tx.add([b"nobody listens"], [])
        tx.kick()
        bench.process(TRANSMITQ)
        assert tx.reap()[0][1] == 0
        assert bench.device.metrics.host_errors == 1


# -- host backends ----------------------------------------------------------------------------

def test_partial_writes_are_completed():
    r, w = os.pipe()
    os.set_blocking(w, False)                     # a full pipe gives short writes and EAGAIN
    data = os.urandom(300_000)
    got = bytearray()

    def drain():
        while chunk := os.read(r, 65536):
            got.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    views = [memoryview(data)[:100_001], memoryview(data)[100_001:]]
    assert writev_all(w, views) == len(data)
    os.close(w)
    reader.join(5)
    os.close(r)
    assert bytes(got) == data


def test_raw_mode_set_and_restored_on_close():
    master, slave = os.openpty()
    before = termios.tcgetattr(slave)
    assert before[3] & RAW_OFF == RAW_OFF
    console = FdConsole(slave, slave)
    assert termios.tcgetattr(slave)[3] & RAW_OFF == 0
    console.close()
    assert termios.tcgetattr(slave) == before
    os.close(master)
    os.close(slave)


def test_raw_mode_restored_when_with_block_raises():
    master, slave = os.openpty()
    before = termios.tcgetattr(slave)
    with pytest.raises(RuntimeError):
        with FdConsole(slave, slave):
            assert termios.tcgetattr(slave)[3] & RAW_OFF == 0
            raise RuntimeError("launcher died")
    assert termios.tcgetattr(slave) == before
    os.close(master)
    os.close(slave)


def test_raw_mode_restored_at_exit(monkeypatch):
    registered = []
    monkeypatch.setattr("atexit.register", registered.append)
    master, slave = os.openpty()
    before = termios.tcgetattr(slave)
    console = FdConsole(slave, slave)
    [restore] = registered
    restore()                                     # what interpreter exit would run
    assert termios.tcgetattr(slave) == before
    console.close()
    os.close(master)
    os.close(slave)


def test_stdio_console_uses_fds_0_and_1():
    console = StdioConsole(raw=False)
    assert (console.in_fd, console.out_fd) == (0, 1)
    console.close()


def test_pty_console_closes_its_fds():
    pty = PtyConsole()
    fds = (pty.in_fd, pty.peer_fd)
    pty.close()
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)
