"""`lguest-harness boot`: each bad input is one clear line and exit status 1; a tiny guest boots."""
import time

import pytest

from launcher import cli
from launcher.hypervisor import mptable
from tests.unit import tiny_guests as g


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "vmlinux"
    path.write_bytes(g.elf(g.say(b"hello from a tiny guest\n") + g.RESET + g.SPIN))
    return path


@pytest.mark.parametrize("argv,message", [
    (["4", "/nonexistent/vmlinux"], "cannot read kernel /nonexistent/vmlinux"),
    (["four", "{k}"], "MEM_MB must be a whole number of MiB, not 'four'"),
    (["1", "{k}"], "MEM_MB must be between 2 and 3072, not 1"),
    (["9999", "{k}"], "MEM_MB must be between 2 and 3072"),
    (["4", "/etc/hostname"], "neither an ELF vmlinux"),
    (["--initrd=/nonexistent", "4", "{k}"], "cannot read initrd /nonexistent"),
    (["--initrd={big}", "2", "{k}"], "does not fit between the kernel's end"),
    (["--timeout=0", "4", "{k}"], "--timeout must be positive"),
    (["--cpus=0", "4", "{k}"], f"--cpus must be a whole number from 1 to {mptable.max_cpus()} on the kvm backend, not 0"),
    (["--cpus=2", "--backend=lguest", "4", "{k}"], "--cpus must be a whole number from 1 to 1 on the lguest backend"),
    (["--block=/nonexistent/disk.img", "4", "{k}"], "--block=/nonexistent/disk.img: no such file"),
    (["--tunnet=10.0.0.300", "4", "{k}"], "--tunnet: failed to parse IP address"),
    (["--system-map=/nonexistent", "4", "{k}"], "cannot read --system-map"),
    (["4", "{k}", "x" * 3000], "exceeds the limit of 2048 bytes"),
])
def test_bad_input_is_one_line(argv, message, tiny, tmp_path, capsys):
    big = tmp_path / "big"
    big.write_bytes(bytes(3 << 20))
    argv = [a.format(k=tiny, big=big) for a in argv]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_segment_outside_memory_says_give_more(tmp_path, capsys):
    path = tmp_path / "vmlinux"
    path.write_bytes(g.make_elf(64, [(0x1000000, b"\x90", 0x1000)], entry=0x1000000))
    assert cli.main(["4", str(path)]) == 1
    assert "give the guest more memory" in capsys.readouterr().err


@pytest.mark.kvm
def test_tiny_guest_boots_and_resets(tiny, capfd):
    assert cli.main(["--verbose", "4", str(tiny), "quiet"]) == 0
    out, err = capfd.readouterr()
    assert out == "hello from a tiny guest\n"
    assert "command line: quiet console=ttyS0" in err and "guest reset itself" in err


@pytest.mark.kvm
def test_tiny_guest_with_two_vcpus_boots_and_resets(tiny, capfd):
    assert cli.main(["--cpus=2", "4", str(tiny)]) == 0          # the AP waits for a SIPI that never comes
    assert capfd.readouterr().out == "hello from a tiny guest\n"


@pytest.mark.kvm
def test_timeout_status(tmp_path, capfd):
    path = tmp_path / "vmlinux"
    path.write_bytes(g.elf(g.SPIN))
    assert cli.main(["--timeout=0.3", "4", str(path)]) == 4
    assert "the run timed out: no end within 0.3 s" in capfd.readouterr().err


@pytest.mark.kvm
def test_stats_json_records_the_ready_marker(tiny, tmp_path, capfd):
    import json

    stats = tmp_path / "stats.json"
    assert cli.main([f"--stats-json={stats}", "--ready-marker=from a tiny", "4", str(tiny)]) == 0
    figures = json.loads(stats.read_text())
    assert figures["outcome"] == "REBOOT" and figures["exits"]["KVM_EXIT_IO"] > 20
    assert 0 < figures["ready_seconds_in_run"] <= figures["seconds_in_run"] <= figures["wall_seconds"]
    assert figures["ready_wall_seconds"] <= figures["wall_seconds"]



def test_the_kvm_backend_declares_it_boots_64_bit_kernels_only():
    from launcher.hypervisor.kvm import KvmBackend
    from launcher.loader import KernelKind
    assert KvmBackend.boots == {KernelKind.ELF64, KernelKind.BZIMAGE_ELF64}


@pytest.mark.kvm
@pytest.mark.parametrize("image", ["elf32", "bzimage32"])
def test_a_32_bit_kernel_is_refused_on_kvm_with_the_remedy(image, tmp_path, capfd):
    # Issue 18 (5): a 32-bit kernel used to load and triple-fault at startup_32 (status 6).
    from tests.unit.loader.images import make_bzimage
    path = tmp_path / image
    elf32 = g.elf(g.say(b"never\n") + g.RESET, 32)
    path.write_bytes(elf32 if image == "elf32" else make_bzimage(elf32, version=0x20F))
    assert cli.main(["--backend=kvm", "4", str(path)]) == 1
    out, err = capfd.readouterr()
    assert out == "" and err.count("\n") == 1, err
    assert "is a 32-bit kernel; the kvm backend boots only 64-bit x86 kernels" in err
    assert "CONFIG_64BIT=y" in err and "lguest-harness kernel config --merge" in err


def test_a_backend_boots_what_its_layout_declares(tmp_path, capsys, monkeypatch):
    # The fake (lguest) backend declares every kind, so the same 32-bit kernel runs there.
    from harness.fakes.lguest_host import BOOT_ENV, register
    register()
    monkeypatch.setenv(BOOT_ENV, "0")
    path = tmp_path / "vmlinux32"
    path.write_bytes(g.elf(g.SPIN, 32))
    assert cli.main(["--backend=fake", "--timeout=5", "8", str(path)]) == 0
    assert "32-bit" not in capsys.readouterr().err


@pytest.mark.kvm
def test_a_halt_with_interrupts_off_ends_the_run_without_waiting_for_the_timeout(tmp_path, capfd):
    path = tmp_path / "vmlinux"
    path.write_bytes(g.elf(g.say(b"about to halt\n") + bytes.fromhex("fa f4") + g.SPIN))    # cli; hlt
    started = time.monotonic()
    assert cli.main(["--timeout=60", "4", str(path)]) == 0
    assert time.monotonic() - started < 30
    assert "the guest halted with interrupts off: the vCPU halted with interrupts disabled" in capfd.readouterr().err


@pytest.mark.kvm
def test_an_idle_halt_with_interrupts_on_is_not_the_end(tmp_path, capfd):
    path = tmp_path / "vmlinux"
    path.write_bytes(g.elf(bytes.fromhex("fb f4") + g.SPIN))      # sti; hlt: idle, an interrupt may come
    assert cli.main(["--timeout=5", "4", str(path)]) == 4
    assert "the run timed out" in capfd.readouterr().err


def test_a_failed_close_is_reported_after_why_the_guest_ended(tiny, capfd, monkeypatch):
    from launcher import launcher
    from launcher.io.service import ServiceThreadStuck

    def stuck(devices):
        raise ServiceThreadStuck("console-transmitq")
    monkeypatch.setattr(launcher, "close_devices", stuck)
    assert cli.main(["4", str(tiny)]) == 1
    err = capfd.readouterr().err
    ended, failed = err.index("the guest reset itself"), err.index("console-transmitq did not stop")
    assert ended < failed, err      # the cause first, the close's error as the last word
