"""Restored guests forked from one warm launcher process (launcher.restore_server).

    child = spawn(restore_arguments, env=..., log=path)    # a pexpect child, as pexpect.spawn gives

The session starts the server on first use and stops it at exit.  Each restore is one
connection: the server forks a child that runs `lguest-harness restore` on a pty we made,
and reports the child's exit status on that connection, so the pexpect child below
behaves as one pexpect spawned itself (isalive, exitstatus, terminate, close).  What this
saves per guest is Python's start and the launcher's imports (~0.3 s here), and the
children share the server's heap: see launcher/restore_server.py.
"""
from __future__ import annotations

import array
import atexit
import fcntl
import json
import os
import pty
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import threading
from pathlib import Path

import pexpect
import ptyprocess

from harness.launch import output_unprocessed

START_TIMEOUT = 60.0     # the server's imports: 0.4 s here, far more in an emulated L1
_lock = threading.Lock()
_server: "RestoreServer | None" = None


class RestoreServerError(RuntimeError):
    pass


class RestoreServer:
    def __init__(self):
        self.directory = Path(tempfile.mkdtemp(prefix="lh-restore-server-"))
        self.socket_path = self.directory / "socket"
        self.process = subprocess.Popen([sys.executable, "-m", "launcher.restore_server", str(self.socket_path)],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        said = select.select([self.process.stdout], [], [], START_TIMEOUT)[0]
        if not said or self.process.stdout.readline().strip() != b"ready":
            self.stop()
            why = f"exit status {self.process.poll()}" if said else f"no word in {START_TIMEOUT:g} s"
            raise RestoreServerError(f"the restore server did not start ({why})")

    def connect(self) -> socket.socket:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        conn.connect(str(self.socket_path))
        return conn

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()
        self.socket_path.unlink(missing_ok=True)
        self.directory.rmdir()


def server() -> RestoreServer:
    """This session's server, started on first use (and again if it died)."""
    global _server
    with _lock:
        if _server is None or not _server.alive():
            _server = RestoreServer()
            atexit.register(_server.stop)
        return _server


class ServedProcess(ptyprocess.PtyProcess):
    """A restore the server forked: its exit status comes over the connection, not waitpid."""

    def __init__(self, pid: int, fd: int, conn: socket.socket):
        super().__init__(pid, fd)
        self.conn = conn

    def _take_status(self, block: bool) -> bool:
        """Whether the child has ended (its status is then set)."""
        if self.terminated:
            return True
        self.conn.setblocking(block)
        try:
            data = self.conn.recv(4096)
        except BlockingIOError:
            return False
        status = json.loads(data)["status"] if data else (128 + signal.SIGKILL) << 8   # server gone
        self.status = status
        if os.WIFEXITED(status):
            self.exitstatus, self.signalstatus = os.WEXITSTATUS(status), None
        else:
            self.exitstatus, self.signalstatus = None, os.WTERMSIG(status)
        self.terminated = True
        self.conn.close()
        return True

    def isalive(self) -> bool:
        return not self._take_status(block=False)

    def wait(self) -> int | None:
        self._take_status(block=True)
        return self.exitstatus


class ServedSpawn(pexpect.spawn):
    """pexpect.spawn whose child the restore server forks (argv: `lguest-harness restore`'s)."""

    def __init__(self, argv: list[str], *, log: Path, netns: str | None = None, **options):
        self._launcher_log, self._netns_name = log, netns
        super().__init__(sys.executable, argv, **options)

    def _spawnpty(self, args, env=None, cwd=None, dimensions=(24, 80), preexec_fn=None, **_):
        master, slave = pty.openpty()
        try:
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", *dimensions, 0, 0))
            output_unprocessed(slave)           # the guest's bytes unchanged, as under harness.launch
            conn = server().connect()
            with open(self._launcher_log, "wb") as log:
                request = {"argv": [a.decode() if isinstance(a, bytes) else a for a in args[1:]],
                           "cwd": cwd or os.getcwd(), "env": dict(env if env is not None else os.environ),
                           "netns": self._netns_name}
                conn.sendmsg([json.dumps(request).encode()],
                             [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [slave, log.fileno()]))])
        finally:
            os.close(slave)
        reply = conn.recv(4096)
        if not reply:
            os.close(master)
            raise RestoreServerError("the restore server hung up instead of forking the guest")
        return ServedProcess(json.loads(reply)["pid"], master, conn)


def spawn(argv: list[str], *, log: Path, netns: str | None = None, **options) -> ServedSpawn:
    """A pexpect child running `lguest-harness restore ARGV...` forked by the session's server."""
    return ServedSpawn(argv, log=log, netns=netns, **options)
