"""Host console plumbing: raw mode on a terminal and its restoration, input delivery, ^C escape."""
import os
import termios
import threading

import pytest

from launcher.hypervisor.errors import BackendUnavailable
from launcher.hypervisor.kvm_sys import KvmSystem
from launcher.io.console import ConsoleInput, write_all


def test_raw_mode_is_set_and_restored_and_input_delivered():
    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        got, done = bytearray(), threading.Event()

        def deliver(data):
            got.extend(data)
            if b"\n" in got:
                done.set()
            return len(data)

        console = ConsoleInput(deliver, on_escape=lambda: None, fd=slave)
        console.start()
        raw = termios.tcgetattr(slave)
        assert not raw[3] & (termios.ICANON | termios.ECHO | termios.ISIG)  # lflags: keys go to the guest
        os.write(master, b"ls\n")
        assert done.wait(5) and bytes(got) == b"ls\n"
        console.restore()
        assert termios.tcgetattr(slave) == before
        console.restore()  # idempotent
    finally:
        os.close(master)
        os.close(slave)


def test_three_ctrl_c_on_a_terminal_call_the_escape():
    master, slave = os.openpty()
    try:
        escaped = threading.Event()
        console = ConsoleInput(lambda d: len(d), on_escape=escaped.set, fd=slave)
        console.start()
        os.write(master, b"\x03\x03\x03")
        assert escaped.wait(5)
        console.restore()
    finally:
        os.close(master)
        os.close(slave)


def test_input_waits_for_a_guest_that_is_not_reading():
    r, w = os.pipe()
    accepted, done = [], threading.Event()

    def deliver(data):  # accepts one byte per call, as a full UART FIFO would
        accepted.append(data[:1])
        if len(accepted) == 3:
            done.set()
        return 1

    ConsoleInput(deliver, on_escape=lambda: None, fd=r).start()
    write_all(w, b"abc")
    assert done.wait(5) and b"".join(accepted) == b"abc"
    os.close(w)


def test_missing_kvm_device_is_one_clear_error(tmp_path):
    with pytest.raises(BackendUnavailable, match="cannot open .*kvm.*No such file"):
        KvmSystem(str(tmp_path / "kvm"))
