"""`lguest-harness boot` on the lguest bus: bad input is one line and exit 1, privileges drop
after LHREQ_INITIALIZE, a reboot re-executes the same argv, and the fake backend runs end to
end from the command line."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import cli as harness_cli
from harness.fakes import lguest_host
from harness.fakes.backends import MemoryConsole
from launcher import devspec as ds
from launcher import cli as launcher_cli
from launcher.launcher import HostSide
from launcher.reexec import Reexec, RestartFailed, original_argv
from launcher.transports.bus import Report
from launcher.hypervisor.lguest import DEV_LGUEST
from tests.unit import tiny_guests as g

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def kernel(tmp_path):
    path = tmp_path / "vmlinux"
    path.write_bytes(g.elf(g.SPIN, 32))
    return path


@pytest.fixture(autouse=True)
def first_boot(monkeypatch):
    monkeypatch.setenv(lguest_host.BOOT_ENV, "0")   # undone after the test, unlike delenv of an unset name


def boot(argv):
    return harness_cli.main(["boot", *argv])


@pytest.mark.parametrize("argv,message", [
    (["8", "/nonexistent/vmlinux"], "cannot read kernel /nonexistent/vmlinux"),
    (["8", "/etc/hostname"], "neither an ELF vmlinux"),
    (["eight", "{k}"], "MEM_MB must be a whole number of MiB, not 'eight'"),
    (["1", "{k}"], "MEM_MB must be between 2 and 3072, not 1"),
    (["--tunnet=10.0.0", "8", "{k}"], "--tunnet: failed to parse IP address '10.0.0'"),
    (["--tunnet=10.0.0.1:52:54:00", "8", "{k}"], "--tunnet: failed to parse MAC address '52:54:00'"),
    (["--tunnet=bridge:", "8", "{k}"], "must specify bridge name"),
    (["--block=/nonexistent.img", "8", "{k}"], "--block=/nonexistent.img: no such file"),
    (["--username=no-such-user-here", "8", "{k}"], "--username=no-such-user-here: no such user"),
    (["--chroot=/nonexistent/dir", "8", "{k}"], "--chroot=/nonexistent/dir: no such directory"),
    (["--initrd={big}", "2", "{k}"], "does not fit between the kernel's end"),
    (["8", "{far}"], "past the end of guest RAM 0x800000 where the lguest device pages start"),
    (["8", "{k}", "x" * 3000], "exceeds the limit of 2048 bytes"),
    (["--timeout=nan", "8", "{k}"], "--timeout must be positive (inf: no limit), not nan"),
    (["--block=/dev/null", "8", "{k}"], "--block=/dev/null: 0 bytes is less than one 512-byte sector"),
    (["--block={tiny}", "8", "{k}"], "1 bytes is less than one 512-byte sector"),
    (["--block={disk}", "--block={disk}", "8", "{k}"], "the same file as --block={disk}; two writable disks"),
])
def test_bad_input_is_one_line(argv, message, kernel, tmp_path, capsys):
    big = tmp_path / "big"
    big.write_bytes(bytes(3 << 20))
    tiny = tmp_path / "tiny"
    tiny.write_bytes(b"x")
    disk = tmp_path / "disk"
    disk.write_bytes(bytes(4096))
    far = tmp_path / "far"
    far.write_bytes(g.make_elf(32, [(0x7FF000, b"\x90", 0x2000)], entry=0x7FF000))
    argv = [a.format(k=kernel, big=big, far=far, tiny=tiny, disk=disk) for a in argv]
    assert boot(["--backend=fake", *argv]) == 1
    err = capsys.readouterr().err
    assert message.format(disk=disk) in err and err.count("\n") == 1, err


def test_lguest_backend_without_the_module(kernel, capsys):
    if os.path.exists(DEV_LGUEST):
        pytest.skip("this host has /dev/lguest")
    assert boot(["--backend=lguest", "8", str(kernel)]) == 1
    assert "cannot open /dev/lguest: No such file or directory (is the lg module loaded?)" in capsys.readouterr().err


def test_unknown_backend_is_a_usage_error(kernel, capsys):
    with pytest.raises(SystemExit) as info:
        boot(["--backend=xen", "8", str(kernel)])
    assert info.value.code == 2 and "invalid choice: 'xen'" in capsys.readouterr().err


@pytest.mark.parametrize("args,status,line", [
    (["fake.end=die", "fake.reason=Bad_hypercall_99"], 6, "the guest crashed (triple fault, failed entry or "
                                                           "internal error): Bad hypercall 99"),
    (["fake.end=panic", "fake.reason=VFS"], 3, "the guest kernel panicked: CRASH: Kernel panic - not syncing: VFS"),
    ([], 0, "the guest powered off: CRASH: Power down"),
])
def test_death_reason_and_exit_status(args, status, line, kernel, capfd):
    assert boot(["--backend=fake", "8", str(kernel), *args]) == status
    assert capfd.readouterr().err.endswith(f"lguest-harness boot: {line}\n")


def parsed(argv):
    return harness_cli.build_parser().parse_args(["boot", *argv])


def test_reboot_reexecs_the_same_argv(kernel, tmp_path, capfd):
    calls, consoles = [], []
    host = HostSide(
        backends=ds.HostBackends(console=lambda: consoles.append(MemoryConsole()) or consoles[-1]),
        reexec=Reexec(execv=lambda path, argv: calls.append((path, argv)),
                      argv=("/usr/bin/launcher", "--rng", "8", "k"), close_fds=False))
    args = parsed(["--backend=fake", "--rng", "8", str(kernel), "fake.end=restart"])
    assert launcher_cli.boot(args, host=host) == 0
    assert calls == [("/usr/bin/launcher", ["/usr/bin/launcher", "--rng", "8", "k"])]
    assert consoles[0].fileno() is None          # devices were stopped and closed first
    assert "asked for a reboot" in capfd.readouterr().err


def test_original_argv_is_the_interpreter_and_its_arguments():
    assert original_argv() == [sys.executable, *sys.orig_argv[1:]]


def test_chroot_and_user_come_after_initialize(kernel, tmp_path, monkeypatch):
    events = []
    real_init = lguest_host.FakeLguestHost._initialize

    def initialize(self, *words):
        events.append("LHREQ_INITIALIZE")
        return real_init(self, *words)

    monkeypatch.setattr(lguest_host.FakeLguestHost, "_initialize", initialize)
    monkeypatch.setattr(os, "chroot", lambda path: events.append(f"chroot {path}"))
    monkeypatch.setattr(os, "chdir", lambda path: events.append(f"chdir {path}"))
    monkeypatch.setattr(os, "initgroups", lambda name, gid: events.append(f"initgroups {name} {gid}"))
    monkeypatch.setattr(os, "setresgid", lambda *ids: events.append(f"setresgid {ids}"))
    monkeypatch.setattr(os, "setresuid", lambda *ids: events.append(f"setresuid {ids}"))
    said = []
    monkeypatch.setattr(launcher_cli, "command_report", lambda prog, verbose: Report(said.append, said.append))
    host = HostSide(backends=ds.HostBackends(console=MemoryConsole))
    args = parsed(["--backend=fake", "--verbose", f"--chroot={tmp_path}", "--username=nobody", "8", str(kernel)])
    assert launcher_cli.boot(args, host=host) == 0
    assert events == ["LHREQ_INITIALIZE", f"chroot {tmp_path}", "chdir /", "initgroups nobody 65534",
                      "setresgid (65534, 65534, 65534)", "setresuid (65534, 65534, 65534)"]
    assert said.index("chroot done") < said.index("Dropping privileges completed")


def test_fake_backend_end_to_end_from_the_command_line(kernel, tmp_path):
    """The Done-when of issue 5: devices, a restart (a real re-exec) and power-off."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(4096))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(lguest_host.BOOT_ENV, None)
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "boot", "--backend", "fake", "--verbose", f"--block={disk}", "--rng",
         "8", str(kernel), "console=hvc0", "fake.restarts=1"],
        cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 0, err
    assert out.count("fake lguest guest: console ok, block ok, rng ok\n") == 2, out
    assert "fake lguest guest: boot 0, 8 MiB" in out and "fake lguest guest: boot 1, 8 MiB" in out
    assert disk.read_bytes().startswith(b"lguest-harness fake guest wrote sector 0\n")
    assert "lguest-harness boot: device 2: virtblock 8 sectors" in err
    assert "the guest asked for a restart: executing the launcher again" in err
    assert err.rstrip().endswith("lguest-harness boot: the guest powered off: CRASH: Power down")


@pytest.mark.parametrize("flag,message", [
    ("--username=no-such-user-here", "--username=no-such-user-here: no such user"),
    ("--chroot=/nonexistent/dir", "--chroot=/nonexistent/dir: no such directory"),
])
def test_kvm_checks_the_privilege_flags_before_it_starts(flag, message, kernel, capsys):
    from launcher import cli
    assert cli.main([flag, "--backend=kvm", "8", str(kernel)]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_failed_reexec_is_one_line():
    def execv(path, argv):
        raise FileNotFoundError(2, "No such file or directory")
    with pytest.raises(RestartFailed, match="could not exec /gone/python to restart the guest: "
                                            "No such file or directory"):
        Reexec(execv=execv, argv=("/gone/python", "-m", "harness.cli"), close_fds=False)()


def test_timeout_breaks_out_of_a_hung_guest(kernel, capfd):
    assert boot(["--backend=fake", "--timeout=0.2", "8", str(kernel), "fake.end=hang"]) == 4
    assert capfd.readouterr().err.endswith("lguest-harness boot: the run timed out: no end within 0.2 s\n")


def test_infinite_timeout_means_no_limit(kernel, tmp_path, capfd):
    stats = tmp_path / "stats.json"
    assert boot(["--backend=fake", "--timeout=inf", f"--stats-json={stats}", "8", str(kernel)]) == 0
    err = capfd.readouterr().err
    assert "Traceback" not in err and "OverflowError" not in err
    assert err.endswith("lguest-harness boot: the guest powered off: CRASH: Power down\n")
    assert '"outcome": "POWER_OFF"' in stats.read_text()      # --stats-json on the lguest bus too


def test_sigterm_ends_a_hung_guest(kernel):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "boot", "--backend=fake", "8", str(kernel),
                             "fake.end=hang"], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline()       # the early console: the guest is running
        assert line.startswith(b"fake lguest guest: boot")
        proc.send_signal(15)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130 and err.decode().endswith("the launcher was interrupted: SIGTERM\n")


def test_tunnet_makes_a_real_tap_in_a_private_netns(kernel):
    """--tunnet through devspec to a tap with the address's class netmask, in `unshare -n`."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(["unshare", "-n", sys.executable, "-m", "harness.cli", "boot", "--backend=fake", "-v",
                           "--tunnet=10.77.0.1:52:54:00:12:34:56", "8", str(kernel)],
                          cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 0, err
    assert "device 2: tun tap0: 10.77.0.1/8" in err
    assert "Device net OK: offered a3 3b 00 11, accepted 20 00 00 00" in err    # MAC accepted
    assert "fake lguest guest: console ok, net ok" in out
