"""harness.warm_restore: restores forked by the session's server behave as pexpect's own children.

No snapshot is needed to check the plumbing: a directory that is not a snapshot makes the
forked `lguest-harness restore` say so on its stderr (the launcher log) and exit 1, which
must come back through the server as the child's exit status."""
import os
import sys
import time

import pexpect

from harness import warm_restore


def _spawn(tmp_path, directory, name="guest"):
    log = tmp_path / f"{name}.launcher.log"
    return warm_restore.spawn(["--timeout", "5", str(directory)], log=log, encoding="utf-8"), log


def test_a_bad_snapshot_comes_back_as_exit_status_1_with_one_line(tmp_path):
    child, log = _spawn(tmp_path, tmp_path / "missing")
    child.expect(pexpect.EOF, timeout=30)
    child.close()
    assert child.exitstatus == 1 and child.signalstatus is None
    said = log.read_text().strip().splitlines()
    assert len(said) == 1 and str(tmp_path / "missing") in said[0] and "Traceback" not in log.read_text()


def test_children_are_forked_by_one_server_and_run_in_the_callers_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    server = warm_restore.server()
    first, _ = _spawn(tmp_path, "relative-missing", "one")
    second, log = _spawn(tmp_path, "relative-missing", "two")
    assert first.pid != second.pid
    for child in (first, second):
        child.expect(pexpect.EOF, timeout=30)
        child.close()
        assert child.exitstatus == 1
    assert warm_restore.server() is server and server.alive()
    assert "relative-missing" in log.read_text()


def test_a_request_without_its_descriptors_is_refused_and_the_server_serves_on(tmp_path):
    conn = warm_restore.server().connect()
    conn.send(b'{"argv": []}')
    conn.settimeout(10)
    assert conn.recv(4096) == b""           # hung up on, nothing forked
    conn.close()
    child, _ = _spawn(tmp_path, tmp_path / "missing")
    child.expect(pexpect.EOF, timeout=30)
    child.close()
    assert child.exitstatus == 1


def test_a_dead_server_is_replaced(tmp_path):
    old = warm_restore.server()
    old.process.kill()
    old.process.wait()
    new = warm_restore.server()
    assert new is not old and new.alive()
    child, _ = _spawn(tmp_path, tmp_path / "missing")
    child.expect(pexpect.EOF, timeout=30)
    child.close()
    assert child.exitstatus == 1


def test_the_server_goes_when_its_session_does(tmp_path):
    # A session that ends without stopping its server (killed): the server must not linger.
    script = ("import os, sys; from harness import warm_restore; "
              "print(warm_restore.server().process.pid, flush=True); os._exit(0)")
    session = pexpect.spawn(sys.executable, ["-c", script], encoding="utf-8")
    session.expect(r"(\d+)", timeout=60)
    pid = int(session.match.group(1))
    session.expect(pexpect.EOF, timeout=30)
    for _ in range(100):
        if not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read().split()[2]:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the restore server {pid} outlived its session")
