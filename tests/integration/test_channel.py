"""The command channel on real guests (recipe kernel, the harness's initramfs with lh-agent on
hvc0), on our KVM launcher and on QEMU (the reference VMM: its virtio console behind our hvc0
pty): the cases every backend shares (tests/channel_cases.py), then what only a real shell can do.
Tests that break or reshape their guest's shell or channel get a fresh guest each (restored from
the session's snapshot where the backend can, booted where it cannot), so no state leaks on."""
import pytest

from harness.console import GuestTimeout
from tests import channel_cases as cases

pytestmark = [pytest.mark.kvm, pytest.mark.slow]
BACKENDS = ["kvm", "qemu"]


@pytest.mark.guest(mem=64, backends=BACKENDS)
@pytest.mark.parametrize("case", cases.CASES, ids=lambda c: c.__name__)
def test_channel_case(guest, guest_backend, tmp_path, case):
    if case is cases.a_command_that_never_ends_times_out and guest_backend == "qemu":
        case(guest, tmp_path, dump_says=("qemu pid", "hvc0 -> pty"))     # the relay's own state
    else:
        case(guest, tmp_path)


@pytest.mark.guest(mem=64, backends=BACKENDS, fresh=True)
def test_garbage_written_into_hvc0_is_a_protocol_error(guest, tmp_path):
    cases.garbage_from_the_guest_is_a_protocol_error(guest, tmp_path, "printf 'junk on the channel' >/dev/hvc0")


@pytest.mark.guest(mem=64, backends=BACKENDS)
def test_serial_log_keeps_the_kernel_log_and_channel_output_stays_off_it(guest):
    assert guest.run("echo only-on-the-channel").stdout == "only-on-the-channel\n"
    assert "lguest-harness: ready" in guest.serial_log
    assert "only-on-the-channel" not in guest.serial_log


@pytest.mark.guest(mem=64, backends=BACKENDS, fresh=True)
def test_a_command_that_closes_stdout_early(guest):
    result = guest.run("echo before; exec 1>&-; echo after; echo to-stderr >&2")
    assert result.stdout == "before\n"
    assert "to-stderr" in result.stderr
    assert guest.run("echo stdout-is-back").stdout == "stdout-is-back\n"   # only that command's stdout closed


@pytest.mark.guest(mem=64, backends=BACKENDS, fresh=True)
def test_an_endless_builtin_loop_is_killed_and_the_shell_state_starts_over(guest):
    guest.run("cd /tmp")
    with pytest.raises(GuestTimeout, match="killed"):
        guest.run("while :; do :; done", timeout=3)
    assert guest.run("pwd").stdout == "/\n"          # a new shell after the kill


@pytest.mark.guest(mem=64, backends=BACKENDS, fresh=True)
def test_shell_state_carries_over_between_commands(guest):
    guest.run("cd /proc; answer() { echo 42; }")
    assert guest.run("pwd; answer").stdout == "/proc\n42\n"
    assert guest.run("exit 3").status == 3           # the shell exits: the agent starts another
    assert guest.run("echo still here").stdout == "still here\n"


@pytest.mark.guest(mem=64, backends=BACKENDS, fresh=True)
def test_late_output_of_a_background_process_never_reaches_the_next_command(guest):
    guest.run("(sleep 1; echo late-from-background) &")
    assert guest.run("sleep 3; echo mine", timeout=60).stdout == "mine\n"
