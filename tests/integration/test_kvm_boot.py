"""The recipe kernel boots to a shell under our KVM backend, answers, and powers off.

One boot serves the ordered tests of TestBootedGuest (a boot costs ~25 s here);
the panic and bzImage tests boot their own guests.
"""
import pytest

from harness.initramfs import READY_MARKER, build_initramfs
from harness.kernel import ensure_kernel
from launcher.hostquirks import cpuid_reaches_guest, detect_host
from launcher.hypervisor.kvm_cpuid import BRAND

pytestmark = [pytest.mark.kvm, pytest.mark.slow]

TOKEN = "lh_test_token=6x7"
MEM_MB = 96


@pytest.mark.guest(mem=MEM_MB, cmdline=(TOKEN,), backend="kvm")
class TestBootedGuest:
    def test_ready_marker_and_prompt(self, guest):
        assert READY_MARKER in guest.serial_log and guest.child.isalive()

    def test_uname_r_is_the_recipe_release(self, guest):
        assert guest.run("uname -r").output == ensure_kernel(log=lambda m: None).release + "\n"

    def test_arithmetic(self, guest):
        assert guest.run("echo $((6*7))").output == "42\n"

    def test_proc_cmdline_is_ours(self, guest, host_quirks):
        words = guest.run("cat /proc/cmdline").output.split()
        keys = {word.split("=", 1)[0] for word in words}
        assert {TOKEN, "console=ttyS0", "panic=-1"} <= set(words)
        assert host_quirks <= keys                              # this host's workarounds, and
        assert ("kvm_pvm_quirks" in keys) == ("kvm_pvm_quirks" in host_quirks)   # never elsewhere

    def test_the_cpu_says_it_is_a_guest(self, guest):
        info = guest.run("cat /proc/cpuinfo").output
        flags = next(line for line in info.splitlines() if line.startswith("flags")).split()
        assert "hypervisor" in flags
        if cpuid_reaches_guest(detect_host()):          # kvm_pvm shows the guest the host's CPUID
            assert f"model name\t: {BRAND}" in info

    def test_memtotal_matches_mem_mb(self, guest):
        total_kb = int(guest.run("grep MemTotal /proc/meminfo").output.split()[1])
        # The kernel's own image and early reservations come off the top; a wrong
        # e820 would show far less (640 KiB) or more than MEM_MB.
        assert MEM_MB * 1024 * 0.6 < total_kb <= MEM_MB * 1024

    def test_pipelines_keep_each_process_s_registers(self, guest):
        # A pipeline runs two freshly exec'd processes side by side.  On kvm_pvm hosts the
        # kernel saves only x87/SSE state, so glibc's AVX string code clobbered the other
        # process's registers (a crash in most of these rounds) until glibc was kept off AVX.
        cmdline_bytes = len(guest.run("cat /proc/cmdline").output)
        rounds = guest.run("for i in 1 2 3 4 5 6 7 8; do dmesg | tail -n 1 >/dev/null || echo crashed;"
                           " cat /proc/cmdline | wc -c; done", timeout=300)
        assert rounds.output.split() == [str(cmdline_bytes)] * 8

    def test_poweroff_ends_the_launcher_with_status_0(self, guest):
        assert guest.poweroff() == 0


def test_panicking_guest_ends_non_zero_with_the_panic_shown(guest_factory, tmp_path):
    # An /init that exits: the kernel panics with "Attempted to kill init!".
    initrd = build_initramfs(tmp_path / "exit.cpio", init_script="#!/bin/sh\necho init exiting\nexit 7\n")
    guest = guest_factory(initrd=initrd, backend="kvm", wait=False)
    guest.expect("init exiting", 300)
    guest.expect(r"Kernel panic - not syncing: Attempted to kill init!")
    assert guest.wait_exit() == 3
    assert "the guest kernel panicked" in guest.launcher_log
    assert "Kernel panic - not syncing" in guest.launcher_log


def test_bzimage_boots_through_its_extracted_vmlinux(guest_factory):
    # The loader pulls the compressed vmlinux out of the bzImage (payload_offset/length)
    # instead of running the in-guest decompressor, which costs ~70 s on this host.
    guest = guest_factory(kernel=ensure_kernel(log=lambda m: None).bzimage, backend="kvm")
    assert guest.poweroff() == 0
