"""The qemu backend (harness.qemu): qemu-system-x86_64 as the VMM behind the same flags, exit
statuses, failure artifacts and options as our launcher; and a test file run where /dev/kvm is
hidden (LGUEST_HARNESS_HIDE_KVM=1) passing on qemu instead of skipping.  QEMU-TCG boots the
recipe guest in a second or two, so these are cheap."""
from pathlib import Path

import pytest

from harness.initramfs import READY_MARKER, build_initramfs
from launcher.hostquirks import HIDE_KVM_ENV

pytestmark = [pytest.mark.slow]

TOKEN = "lh_test_token=6x7"
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.guest(mem=96, cmdline=(TOKEN,), backends=["qemu"])
class TestQemuGuest:
    def test_the_command_line_is_ours_without_kvm_pvm_quirks(self, guest):
        words = guest.run("cat /proc/cmdline").stdout.split()
        assert {TOKEN, "console=ttyS0", "panic=-1", "lhagent=hvc0"} <= set(words)
        assert not {"kvm_pvm_quirks", "noxsave"} & {w.split("=", 1)[0] for w in words}   # TCG needs none

    def test_memtotal_matches_mem(self, guest):
        total_kb = int(guest.run("grep MemTotal /proc/meminfo").stdout.split()[1])
        assert 96 * 1024 * 0.6 < total_kb <= 96 * 1024

    def test_poweroff_ends_with_status_0(self, guest):
        assert guest.poweroff() == 0
        assert "the guest halted" in guest.launcher_log or "powered off" in guest.launcher_log


@pytest.mark.guest(backends=["qemu"])      # needs only QEMU, /dev/kvm or not
def test_panic_is_status_3_with_the_panic_shown(guest_factory, tmp_path):
    initrd = build_initramfs(tmp_path / "exit.cpio", init_script="#!/bin/sh\necho init exiting\nexit 7\n")
    guest = guest_factory(initrd=initrd, wait=False)
    guest.expect("init exiting", 120)
    guest.expect(r"Kernel panic - not syncing: Attempted to kill init!")
    assert guest.wait_exit() == 3
    assert "the guest kernel panicked: Kernel panic - not syncing" in guest.launcher_log


@pytest.mark.guest(backends=["qemu"])
def test_timeout_is_status_4(guest_factory):
    guest = guest_factory(timeout=2, wait=False)
    assert guest.wait_exit(timeout=60) == 4
    assert "the run timed out: no end within 2 s" in guest.launcher_log


def test_without_dev_kvm_a_test_file_passes_on_qemu_and_auto_says_why(pytester, guest_kernel, tmp_path, monkeypatch):
    monkeypatch.setenv(HIDE_KVM_ENV, "1")
    monkeypatch.setenv("PYTHONPATH", str(REPO))       # the checkout under test, installed or not
    pytester.makepyfile(test_user="""
        def test_uname(guest):
            assert guest.run("uname -r").status == 0

        def test_deliberately_failing(guest):
            assert guest.run("false").status == 0
    """)
    keep = tmp_path / "logs"
    on_qemu = pytester.runpytest_subprocess(f"--guest-kernel={guest_kernel}", "--guest-backend=auto",
                                            f"--guest-keep-logs={keep}", "-rs", timeout=600)
    on_qemu.assert_outcomes(passed=1, failed=1)      # booted and ran: no skip
    on_qemu.stdout.fnmatch_lines(["lguest-harness: --guest-backend auto chose qemu: this host has no /dev/kvm*",
                                  "*serial log (guest*", f"*{READY_MARKER}*"])
    saved = list(keep.glob("*deliberately_failing*/*.launcher.log"))
    assert len(saved) == 1 and "qemu-system-x86_64" in saved[0].read_text()     # same artifacts
    on_kvm = pytester.runpytest_subprocess(f"--guest-kernel={guest_kernel}", "--guest-backend=kvm", "-rs",
                                           timeout=600)
    on_kvm.assert_outcomes(skipped=2)
    on_kvm.stdout.fnmatch_lines(["*backend kvm needs /dev/kvm, which this host lacks*"])
