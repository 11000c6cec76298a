"""Ending a launcher from outside: three ^C on its terminal, SIGTERM, SIGINT -> status 130."""
import signal
import subprocess
import sys
import time

import pexpect
import pytest

from tests.unit import tiny_guests as g

pytestmark = pytest.mark.kvm


@pytest.fixture
def spinning(tmp_path):
    path = tmp_path / "vmlinux"
    path.write_bytes(g.elf(g.say(b"spinning\n") + g.SPIN))
    return path


def test_three_ctrl_c_on_the_terminal_end_the_launcher(spinning):
    child = pexpect.spawn(sys.executable, ["-m", "harness.cli", "boot", "--timeout=60", "4", str(spinning)],
                          encoding="utf-8", timeout=30)
    child.expect("spinning")
    child.send("\x03")  # one ^C goes to the guest (raw mode), the launcher carries on
    time.sleep(0.3)
    assert child.isalive()
    child.send("\x03\x03")
    child.expect("interrupted: three \\^C within a second")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_end_the_run_with_130(spinning, signum):
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "boot", "--timeout=60", "4", str(spinning)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline() == b"spinning\n"
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert b"interrupted" in err and b"Traceback" not in err


def test_console_bytes_reach_the_terminal_unchanged(tmp_path):
    # Raw mode covers output too: "\r\n" and "\n" from the guest arrive exactly as sent.
    path = tmp_path / "vmlinux"
    path.write_bytes(g.elf(g.say(b"a\r\nb\nc\x00\xff\n") + g.RESET + g.SPIN))
    child = pexpect.spawn(sys.executable, ["-m", "harness.cli", "boot", "--timeout=60", "4", str(path)],
                          timeout=30)
    child.expect(pexpect.EOF)
    assert b"a\r\nb\nc\x00\xff\n" in child.before
