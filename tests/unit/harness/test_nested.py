"""The L1 VM for ordinary KVM: its init script and QEMU command line (the stage itself runs in CI)."""
import shlex
import subprocess
import sys

from harness import nested


def test_init_loads_modules_in_order_then_runs_the_command_quoted_in_the_host_tree(tmp_path):
    workdir = tmp_path / "my repo"
    workdir.mkdir()
    command = [sys.executable, "-c", "import os; print(os.getcwd(), os.environ['LH_X'], 'a  b')"]
    init = nested.l1_init(["kvm.ko", "kvm-amd.ko"], str(workdir), command, {"LH_X": "it's"})
    lines = init.splitlines()
    assert lines.index("insmod /modules/kvm.ko || echo 'nested: insmod kvm.ko failed'") < \
        lines.index("insmod /modules/kvm-amd.ko || echo 'nested: insmod kvm-amd.ko failed'")
    chroot, newroot, shell, flag, job = shlex.split(next(line for line in lines if line.startswith("chroot ")))
    assert (chroot, newroot, shell, flag) == ("chroot", "/newroot", "/bin/sh", "-c")
    ran = subprocess.run(["/bin/sh", "-c", job], capture_output=True, text=True, check=True)
    assert ran.stdout == f"{workdir} it's a  b\n"       # the job survives both levels of quoting
    assert lines[-2:] == [f'echo "{nested.EXIT_LINE}$?"', "poweroff -f"]
    assert "lowerdir=/host,upperdir=/rw/upper" in init and "ro,cache=loose" in init   # the host stays read-only


def test_exit_status_is_read_from_the_console_among_kernel_noise():
    console = b"[ 1.0] boot\r\nnested: /dev/kvm is kvm_amd\r\n... lguest-harness-nested: exit 5\r\n[ 9.9] reboot: Power down"
    assert [int(n) for n in nested.EXIT_PATTERN.findall(console)] == [5]


def test_l1_is_an_svm_capable_amd_cpu_with_the_host_root_read_only(tmp_path):
    argv = nested.qemu_argv(tmp_path / "vmlinuz", tmp_path / "l1.cpio", cpus=2, mem_mb=4096)
    assert argv[argv.index("-cpu") + 1] == "EPYC" and argv[argv.index("-accel") + 1].startswith("tcg")
    virtfs = argv[argv.index("-virtfs") + 1]
    assert "path=/," in virtfs and "readonly=on" in virtfs and "kvm_amd.nested=1" in argv[argv.index("-append") + 1]


LOCKED = (b"[  981.580802] watchdog: BUG: soft lockup - CPU#0 stuck for 861s! [kworker/0:2:54]\r\n"
          b"[  981.680219] watchdog: BUG: soft lockup - CPU#1 stuck for 861s! [swapper/1:0]\r\n")


def test_a_cpu_stuck_for_minutes_in_l1s_kernel_is_a_lockup_and_a_passing_stall_is_not():
    assert nested.l1_lockup(LOCKED) == "watchdog: BUG: soft lockup - CPU#0 stuck for 861s! [kworker/0:2:54]"
    assert nested.l1_lockup(b"[   61.1] watchdog: BUG: soft lockup - CPU#0 stuck for 23s! [python3:812]\n") is None
    # A guest's console inside a pytest report is not L1's kernel speaking.
    assert nested.l1_lockup(b"E   [  900.0] watchdog: BUG: soft lockup - CPU#0 stuck for 600s! [sh:1]\n") is None


def test_a_locked_up_l1_is_stopped_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(nested, "LOCKUP_POLL", 0.05)
    script = tmp_path / "l1"
    script.write_text("#!/bin/sh\nprintf '%s' '" + LOCKED.decode().replace("\r\n", "\n") + "'\nexec sleep 600\n")
    script.chmod(0o755)
    log = tmp_path / "console.log"
    try:
        nested._run_l1([str(script)], log, timeout=60)
    except nested.L1LockedUp as err:
        assert "stuck for 861s" in str(err)
    else:
        raise AssertionError("the lockup went unnoticed")
    assert b"CPU#1" in log.read_bytes()


def test_an_l1_past_its_time_is_stopped(tmp_path, monkeypatch):
    monkeypatch.setattr(nested, "LOCKUP_POLL", 0.05)
    try:
        nested._run_l1(["sleep", "600"], tmp_path / "console.log", timeout=1)
    except nested.L1Stuck:
        raise AssertionError("a timeout is not a reason to run L1 again")
    except nested.NestedError as err:
        assert "did not finish within 1 s" in str(err)


def test_an_l1_whose_console_falls_silent_is_stopped(tmp_path, monkeypatch):
    monkeypatch.setattr(nested, "LOCKUP_POLL", 0.05)
    monkeypatch.setattr(nested, "STALL_SECONDS", 0.5)
    log = tmp_path / "console.log"
    try:
        nested._run_l1(["sh", "-c", "echo test_a.py ...; sleep 600"], log, timeout=60)
    except nested.L1Silent as err:
        assert "has not moved for" in str(err)
    else:
        raise AssertionError("the silence went unnoticed")


def test_a_stuck_l1_runs_once_more_within_the_same_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(nested, "LOCKUP_POLL", 0.05)
    monkeypatch.setattr(nested, "STALL_SECONDS", 0.5)
    marker = tmp_path / "ran-once"
    l1 = f"if [ -e {marker} ]; then echo '{nested.EXIT_LINE}0'; else touch {marker}; echo boot; sleep 600; fi"
    log, said = tmp_path / "console.log", []
    nested._run_attempts(["sh", "-c", l1], log, nested.time.monotonic() + 60, said.append)
    assert nested.EXIT_LINE.encode() in log.read_bytes()
    assert b"boot" in (tmp_path / "console-first-attempt.log").read_bytes()      # the first run's console is kept
    assert any("starting L1 once more" in line for line in said)
