"""virtio console on virtio-mmio in the recipe guest: hvc0 byte-exact both ways (64 KiB bursts), then
a shell on hvc0 that answers commands.

The launcher puts hvc0 on a pty (announced on its stderr); the test opens the pty's raw peer.
The guest side is made raw with stty, with fd 3 of the serial shell holding hvc0 open so the
settings stay put.  The shell on hvc0 comes last: once it runs it owns hvc0's input.
"""
import os
import secrets
import select
import threading
import time

import pexpect.fdpexpect
import pytest

from harness.console import Guest
from tests.integration.virtio_guest import BACKENDS, sha256, shared_guest

pytestmark = [pytest.mark.kvm, pytest.mark.slow]

BURST = 64 * 1024


@pytest.fixture(scope="module", params=BACKENDS)
def vg(request, tmp_path_factory):
    return shared_guest(request, tmp_path_factory, request.param)


@pytest.fixture(scope="module")
def hvc(vg):
    fd = os.open(vg.hvc_path, os.O_RDWR | os.O_NOCTTY)
    vg.check("exec 3<>/dev/hvc0 && stty raw -echo -iexten <&3")
    yield fd
    os.close(fd)


def read_exactly(fd: int, count: int, timeout: float) -> bytes:
    got = bytearray()
    deadline = time.monotonic() + timeout
    while len(got) < count:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        got += os.read(fd, count - len(got))
    return bytes(got)


def drain(fd: int) -> bytes:
    return read_exactly(fd, 1 << 20, 0.2)


def test_guest_to_host_burst_is_byte_exact(vg, hvc):
    drain(hvc)
    guest_sha = vg.check(f"head -c {BURST} /dev/urandom > /tmp/burst && sha256sum /tmp/burst").split()[0]
    received = []
    reader = threading.Thread(target=lambda: received.append(read_exactly(hvc, BURST, 120)))
    reader.start()
    vg.check("cat /tmp/burst >&3")
    reader.join()
    assert len(received[0]) == BURST
    assert sha256(received[0]) == guest_sha
    assert drain(hvc) == b""        # nothing more than the file's bytes


def test_host_to_guest_burst_is_byte_exact(vg, hvc):
    data = secrets.token_bytes(BURST)
    guest = vg.guest
    guest.sendline(f"echo G''O; head -c {BURST} <&3 > /tmp/in; sha256sum /tmp/in; echo D''ONE")
    guest.expect(r"GO\r?\n", 60)
    view = memoryview(data)
    while view:
        view = view[os.write(hvc, view):]
    guest.expect(r"([0-9a-f]{64})  /tmp/in", 120)
    assert guest.child.match.group(1) == sha256(data)
    guest.expect(r"DONE\r?\n", 60)
    guest.expect(r"# ", 30)


def test_short_text_both_ways(vg, hvc):
    line = "héllo, hvc0: tabs\tand ~!@#$%^&*() marks\n".encode()
    vg.check("echo -n 'from the guest' >&3")
    assert read_exactly(hvc, 14, 30) == b"from the guest"
    guest = vg.guest
    guest.sendline(f"echo G''O; head -c {len(line)} <&3 > /tmp/line; od -An -tx1 /tmp/line; echo D''ONE")
    guest.expect(r"GO\r?\n", 60)
    os.write(hvc, line)
    guest.expect(r"DONE\r?\n", 60)
    dumped = guest.child.before
    assert bytes.fromhex("".join(dumped.split())) == line
    guest.expect(r"# ", 30)


def test_a_shell_on_hvc0_answers_commands(vg, hvc):
    vg.check("stty sane <&3 && exec 3<&-")
    vg.check("(setsid sh -c 'exec sh -i </dev/hvc0 >/dev/hvc0 2>&1' &)")
    shell = Guest(pexpect.fdpexpect.fdspawn(hvc, encoding="utf-8", codec_errors="replace"), name="hvc0")
    shell.sendline("")
    shell.expect(r"# ", 60)
    result = shell.run("echo $((6*7)); tty", timeout=60)
    assert result.status == 0
    assert result.output.split() == ["42", "/dev/hvc0"]
    assert shell.run("ls /dev/vda", timeout=60).output.strip() == "/dev/vda"
    assert shell.run("false", timeout=60).status == 1
