"""`lguest-harness run`: argument rules, the guest's /init and reading CMD's status off the 8250."""
import io
import pwd
import subprocess

import pytest

from harness.run import RUN_FAILED, RunUsageError, StatusWatcher, command_of, environment, init_script
from launcher.hypervisor.base import Outcome, Stopped


def test_the_double_dash_is_required_and_a_command_must_follow():
    assert command_of(["--", "sh", "-c", "exit 7"]) == ["sh", "-c", "exit 7"]
    assert command_of(["--", "--mem", "3"]) == ["--mem", "3"]     # after --, never our flags
    for bad in ([], ["sh"], ["--"]):
        with pytest.raises(RunUsageError):
            command_of(bad)


def _watch(chunks, nonce="abc"):
    err = io.BytesIO()
    watcher = StatusWatcher(nonce, err=err)
    for chunk in chunks:
        watcher.feed(chunk)
    return watcher, err


def test_the_boot_log_is_hidden_and_stderr_passes_until_the_status():
    watcher, err = _watch([b"[ 0.1] booting\r\n\nlh-run-abc-st", b"art\r\noops: to stderr\n",
                           b"more\n\nlh-run-abc-exit:", b"7\n", b"after\n"])
    assert watcher.status == 7
    assert err.getvalue() == b"oops: to stderr\nmore\n"
    assert watcher.result(Stopped(Outcome.POWER_OFF, ""), 60) == 7


def test_another_runs_nonce_is_just_output():
    watcher, err = _watch([b"lh-run-abc-start\n", b"\nlh-run-xyz-exit:0\n", b"\nlh-run-abc-exit:3\n"])
    assert watcher.status == 3
    assert b"lh-run-xyz-exit:0" in err.getvalue()


def test_a_panic_before_the_status_is_run_failed_in_one_line(capsys):
    watcher, _ = _watch([b"Kernel panic - not syncing: boom\n"])
    assert watcher.result(Stopped(Outcome.PANIC, "Kernel panic - not syncing: boom"), 60) == RUN_FAILED
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "panic" in line


def test_a_setup_failure_is_named(capsys):
    watcher, _ = _watch([b"\nlh-run-abc-fail:mounting the host root over virtio-fs\n"])
    assert watcher.result(Stopped(Outcome.POWER_OFF, ""), 60) == RUN_FAILED
    assert "mounting the host root over virtio-fs" in capsys.readouterr().err


def test_init_script_is_valid_sh_and_quotes_the_command():
    user = pwd.getpwuid(0)
    script = init_script(["printf", "%s\n", "a b", "$HOME"], "n0nce", ["/srv/out dir"], "/work/x y", user,
                         environment({"PATH": "/usr/bin", "HOME": "/root", "SECRET": "no", "LC_ALL": "C"}),
                         stdin_tty=False, keep_onlcr=False)
    subprocess.run(["sh", "-n"], input=script.encode(), check=True)
    assert "'a b'" in script and "'$HOME'" in script
    assert "SECRET" not in script and "LC_ALL=C" in script
    assert "mount -t virtiofs rw0 '/newroot/srv/out dir'" in script or "/newroot'/srv/out dir'" in script
    assert "</dev/null" in script and "lh-run-n0nce-exit:$status" in script


def test_a_user_other_than_root_runs_through_su():
    user = pwd.struct_passwd(("alice", "x", 1000, 1000, "", "/home/alice", "/bin/sh"))
    script = init_script(["id"], "n", [], "/", user, {"HOME": "/home/alice"}, stdin_tty=True, keep_onlcr=True)
    assert "su -p -s /bin/sh alice -c" in script and "</dev/hvc0" in script
    assert "lowerdir=/newroot/home/alice" in script


def test_the_start_lines_end_in_a_later_chunk_is_not_stderr():
    watcher, err = _watch([b"\nlh-run-abc-start", b"\r", b"\nerr\n", b"\nlh-run-abc-exit:7\n"])
    assert watcher.status == 7 and err.getvalue() == b"err\n"
