"""The console API against a local shell that plays the guest (no hypervisor needed)."""
import io

import pexpect
import pytest

from harness.console import Guest, GuestExited, GuestTimeout, SerialLog
from harness.initramfs import READY_MARKER


@pytest.fixture
def shell_guest():
    script = f"echo '{READY_MARKER}'; echo 'kernel: noise'; PS1='# ' exec sh -i"
    child = pexpect.spawn("sh", ["-c", script], encoding="utf-8", env={"PATH": "/bin:/usr/bin"})
    guest = Guest(child, name="shell")
    guest.wait_ready(timeout=10)
    yield guest
    guest.close()


def test_run_returns_output_and_status(shell_guest):
    result = shell_guest.run("echo $((6*7))")
    assert result == type(result)("42\n", 0)
    failed = shell_guest.run("echo oops; false")
    assert failed.status == 1 and failed.output == "oops\n" and not failed.ok


def test_markers_in_command_do_not_confuse_framing(shell_guest):
    result = shell_guest.run("printf 'a\\nb\\n'; exit_status_is_kept() { return 3; }; exit_status_is_kept")
    assert result.output == "a\nb\n" and result.status == 3


def test_timeout_error_shows_console_tail(shell_guest):
    with pytest.raises(GuestTimeout) as err:
        shell_guest.run("echo started; sleep 5", timeout=0.5)
    assert "console tail" in str(err.value) and "started" in str(err.value)


def test_exit_is_reported_with_status(shell_guest):
    shell_guest.sendline("exit 7")
    assert shell_guest.wait_exit(timeout=10) == 7
    assert "kernel: noise" in shell_guest.serial_log


def test_expect_after_exit_raises_guest_exited(shell_guest):
    shell_guest.sendline("exit 0")
    with pytest.raises(GuestExited, match="status 0"):
        shell_guest.expect("never printed", timeout=10)


def test_an_echoed_log_hides_terminal_queries_even_split_across_reads():
    shown = io.StringIO()
    log = SerialLog()
    log.echo_to(shown)
    for chunk in ("# \x1b[6", "n", "uname -a\r\n\x1b", "[0mLinux\r\n"):
        log.write(chunk)
    assert shown.getvalue() == "# uname -a\r\nLinux\r\n"
    assert log.getvalue() == "# \x1b[6nuname -a\r\n\x1b[0mLinux\r\n"    # the log keeps every byte
