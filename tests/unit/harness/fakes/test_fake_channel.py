"""The command channel on the fake backend: the same cases as the KVM guests' (tests/channel_cases.py),
against harness.fakes.fake_shell's FakeAgent through the real launcher's console."""
import os
from pathlib import Path

import pytest

from harness import channel as ch
from harness.fakes import lguest_host
from harness.fakes.fake_shell import FakeShell, Write
from harness.launch import GuestSpec, boot
from tests import channel_cases as cases
from tests.unit import tiny_guests as g

REPO = Path(__file__).resolve().parents[4]


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fake-channel")
    kernel = tmp / "vmlinux"
    kernel.write_bytes(g.elf(g.SPIN, 64))
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", lguest_host.BOOT_ENV)}
    os.environ["PYTHONPATH"] = str(REPO)
    os.environ.pop(lguest_host.BOOT_ENV, None)
    guest = boot(GuestSpec(kernel=kernel, backend="fake", mem=16, cmdline=("console=ttyS0",)), tmp / "logs",
                 ready_timeout=30)
    yield guest
    guest.close()
    for key, value in saved.items():
        os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


@pytest.mark.parametrize("case", cases.CASES, ids=lambda c: c.__name__)
def test_channel_case(guest, tmp_path, case):
    case(guest, tmp_path)


def test_a_state_dump_shows_every_queue_and_the_guest_runs_on(guest):
    dump = guest.state_dump()
    assert "console: status 0x" in dump and "receiveq" in dump and "transmitq" in dump
    assert "last_avail_idx" in dump and "thread running" in dump
    assert guest.run("echo alive").stdout == "alive\n"


def test_garbage_from_the_guest(guest, tmp_path):
    cases.garbage_from_the_guest_is_a_protocol_error(guest, tmp_path, "lh-garbage junk-on-the-console")


def test_fake_shell_switches_to_the_agent_on_hello():
    shell = FakeShell(cmdline="lhagent=console")
    assert b"lguest-harness: agent on console" in shell.start()[0].data
    effects = shell.feed(b"H 00ff\n" + ch.request_line("C", 1, b"echo hi; nosuch", "n"))
    wire = b"".join(e.data for e in effects if isinstance(e, Write))
    frames = ch.FrameDecoder().feed(wire, skip_junk=True)      # the typed hello's echo comes first
    assert [(f.kind, f.ident, f.payload) for f in frames] == [
        ("H", 0, b"00ff 1"), ("O", 1, b"hi\n"), ("E", 1, b"sh: nosuch: not found\n"), ("X", 1, b"127")]
