"""The recipe kernel boots to a shell under our KVM backend, answers, and powers off.

One boot serves the ordered tests of TestBootedGuest (a boot costs ~25 s here);
the panic test boots its own guest.
"""
import re
import time

import pytest

from harness.initramfs import READY_MARKER, build_initramfs
from tests.integration.conftest import BOOT_TIMEOUT, COMMAND_TIMEOUT, MEM_MB

pytestmark = [pytest.mark.kvm, pytest.mark.slow]

TOKEN = "lh_test_token=6x7"
PROMPT = "# "


@pytest.fixture(scope="module")
def booted(launcher_factory):
    guest = launcher_factory(TOKEN)
    guest.started = time.monotonic()
    guest.expect(READY_MARKER, BOOT_TIMEOUT)
    guest.expect(PROMPT)
    return guest


class TestBootedGuest:
    def test_ready_marker_and_prompt(self, booted):
        assert booted.console.isalive()

    def test_uname_r_is_the_recipe_release(self, booted, kernel):
        booted.run("uname -r", re.escape(kernel.release) + r"\r?\n")

    def test_arithmetic(self, booted):
        booted.run("echo $((6*7))", r"\n42\r?\n")

    def test_proc_cmdline_is_ours(self, booted):
        line = booted.run("cat /proc/cmdline", r"\n[^\n]*" + re.escape(TOKEN) + r"[^\n]*\n")
        assert "console=ttyS0" in line and "panic=-1" in line

    def test_memtotal_matches_mem_mb(self, booted):
        text = booted.run("grep MemTotal /proc/meminfo", r"MemTotal:\s+(\d+) kB")
        total_kb = int(re.search(r"(\d+)", text).group(1))
        # The kernel's own image and early reservations come off the top; a wrong
        # e820 would show far less (640 KiB) or more than MEM_MB.
        assert MEM_MB * 1024 * 0.6 < total_kb <= MEM_MB * 1024

    def test_poweroff_ends_the_launcher_with_status_0(self, booted):
        booted.console.sendline("poweroff -f")
        assert booted.wait_exit(COMMAND_TIMEOUT) == 0


def test_panicking_guest_ends_non_zero_with_the_panic_shown(launcher_factory, tmp_path):
    # An /init that exits: the kernel panics with "Attempted to kill init!".
    initrd = build_initramfs(tmp_path / "exit.cpio", init_script="#!/bin/sh\necho init exiting\nexit 7\n")
    guest = launcher_factory(initrd=initrd)
    guest.expect("init exiting", BOOT_TIMEOUT)
    guest.expect(r"Kernel panic - not syncing: Attempted to kill init!")
    guest.expect(r"lguest-harness boot: the guest kernel panicked: .*Kernel panic - not syncing")
    assert guest.wait_exit() == 3


def test_bzimage_boots_through_its_extracted_vmlinux(launcher_factory, kernel):
    # The loader pulls the compressed vmlinux out of the bzImage (payload_offset/length)
    # instead of running the in-guest decompressor, which costs ~70 s on this host.
    guest = launcher_factory(kernel_path=kernel.bzimage)
    guest.expect(READY_MARKER, BOOT_TIMEOUT)
    guest.expect(PROMPT)
    guest.console.sendline("poweroff -f")
    assert guest.wait_exit() == 0
