"""`lguest-harness boot`: each bad input is one clear line and exit status 1; a tiny guest boots."""
import pytest

from launcher import cli
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

