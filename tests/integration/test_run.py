"""`lguest-harness run -- CMD`: real guests that see the host's / over virtio-fs."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness.kernel import ensure_kernel
from harness.run import RUN_FAILED

pytestmark = [pytest.mark.kvm, pytest.mark.slow]

RUN = [sys.executable, "-m", "harness.cli", "run"]
CHECKOUT = str(Path(__file__).resolve().parents[2])     # this checkout's packages, from any cwd


def run(*args, timeout=1800, env=None, **kwargs):
    # --timeout 1500: one guest on this 2-core kvm_pvm host took ~8 min at load 12.
    return subprocess.run([*RUN, "--timeout", "1500", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": CHECKOUT, **(env or {})}, **kwargs)


def test_uname_prints_the_guests_release_and_exits_0():
    done = run("--", "uname", "-r")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ensure_kernel().release + "\n"


def test_the_commands_exit_status_is_ours():
    done = run("--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert done.returncode == 7, done.stderr
    assert done.stdout == "out\n"
    assert done.stderr == "err\n"


def test_the_hosts_python_runs_in_the_guest():
    done = run("--", "python3", "-c", "import sys; print(2+2, sys.executable)")
    assert done.returncode == 0, done.stderr
    four, executable = done.stdout.split()
    assert four == "4" and os.path.samefile(executable, sys.executable) is not None


def test_rwdir_writes_reach_the_host_and_nothing_else_does(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    marker = tmp_path / "untouched"        # beside the rwdir, under /tmp: the guest's overlay takes it
    scratch = f"/tmp/lh-run-scratch-{os.getpid()}-{tmp_path.name}"     # a name no host file has
    outside = f"/lh-run-{os.getpid()}"     # the host's / itself: read-only, the write is refused
    script = (f"echo made in the guest > {out}/file && echo x > {scratch} && echo y > {marker} && "
              f"! echo z 2>/dev/null > {outside} && pwd")
    done = run("--rwdir", str(out), "--", "sh", "-c", script, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{tmp_path}\n"                   # the current directory came along
    assert (out / "file").read_text() == "made in the guest\n"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["file", "out"]
    assert not os.path.exists(scratch)                       # /tmp was an overlay in the guest
    assert not os.path.exists(outside)


def test_a_missing_virtiofsd_is_one_line():
    done = run("--", "true", env={"LGUEST_HARNESS_VIRTIOFSD": "/nonexistent/virtiofsd"}, timeout=120)
    assert done.returncode == RUN_FAILED
    assert done.stderr.strip().count("\n") == 0
    assert "LGUEST_HARNESS_VIRTIOFSD=/nonexistent/virtiofsd: not an executable file" in done.stderr


def test_a_share_that_does_not_exist_is_one_line():
    done = subprocess.run([sys.executable, "-m", "harness.cli", "boot", "--share=/nonexistent/dir:t", "64",
                           str(ensure_kernel().vmlinux)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": CHECKOUT})
    assert done.returncode == 1
    assert done.stderr.strip() == "lguest-harness boot: --share=/nonexistent/dir:t: /nonexistent/dir: no such directory"


def _virtiofsd_pids(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if "(virtiofsd)" in stat and int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(entry))
    return found


def test_a_backend_killed_mid_run_is_reported_and_the_launcher_ends():
    process = subprocess.Popen([*RUN, "--timeout", "300", "--", "sh", "-c", "echo started; sleep 20; cat /etc/hostname"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": CHECKOUT})
    started = process.stdout.readline()
    assert started == "started\n"
    pids = _virtiofsd_pids(process.pid)
    assert pids, "no virtiofsd below the launcher"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    out, err = process.communicate(timeout=300)
    assert process.returncode == RUN_FAILED
    assert "exited with status -9 while the guest was running" in err
    assert err.strip().splitlines()[-1].startswith("lguest-harness run: ")
