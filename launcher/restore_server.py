"""A warm process that forks restored guests: `python3 -m launcher.restore_server SOCKET`.

`lguest-harness restore` spends most of its first half second starting Python and importing
the launcher; the guest itself is running again in milliseconds.  A test session restores
many guests, so the harness keeps one of these servers: it imports the restore path once,
freezes its heap (gc.freeze: the children's garbage collector leaves those pages alone) and
forks one child per guest, each running `lguest-harness restore` exactly as the command
does.  The children share the server's pages copy-on-write, as they share the snapshot's
guest memory, so N restored guests cost little more than one.

Protocol, over a SOCK_SEQPACKET Unix socket, one connection per guest:
  client -> server: JSON {"argv": [...restore arguments], "cwd": ..., "env": {...},
                    "netns": name or null}, with SCM_RIGHTS [terminal, stderr]
  server -> client: JSON {"pid": N}, later {"status": WAITSTATUS} when the child ends.
The terminal (a pty's slave end) becomes the child's controlling terminal and stdin and
stdout, as under pexpect; stderr is the launcher's log.  A client that hangs up kills its
child: guests never outlive the session that restored them.
"""
from __future__ import annotations

import array
import fcntl
import gc
import importlib
import io
import json
import os
import selectors
import signal
import socket
import sys
import termios
import traceback

from launcher import cli_restore, snapshot
from launcher.io.processes import die_with_parent

# The whole restore path, imported before the first fork so no child pays for it (the
# launcher imports its backend, devices and transports when a guest needs them).
WARM_MODULES = ("launcher.hypervisor.kvm", "launcher.transports.mmio", "launcher.transports.pci",
                "launcher.devices.console", "launcher.devices.net", "launcher.devices.rng",
                "launcher.devices.snapshot", "launcher.transports.mmio_snapshot", "launcher.io.console_backends",
                "launcher.io.service", "native.barrier", "pyroute2.netns")

MAX_MESSAGE = 1 << 16
FDS_PER_REQUEST = 2


def receive(conn: socket.socket) -> tuple[dict | None, list[int]]:
    """One request: its JSON and the descriptors that came with it (None, [] at hang-up)."""
    fds = array.array("i")
    data, ancillary, _flags, _addr = conn.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(FDS_PER_REQUEST * fds.itemsize))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    return (json.loads(data) if data else None), list(fds)


def send(conn: socket.socket, message: dict) -> None:
    try:
        conn.send(json.dumps(message).encode())
    except OSError:
        pass            # the client went away; its child is killed when we see the hang-up


class Server:
    def __init__(self, path: str):
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self.listener.bind(path)
        self.listener.listen(64)
        self.children: dict[int, socket.socket] = {}     # pid -> its client's connection
        self.selector = selectors.DefaultSelector()
        self.wakeup_r, wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wakeup_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)   # wake the loop; reaped there
        self.selector.register(self.listener, selectors.EVENT_READ, self._accept)
        self.selector.register(self.wakeup_r, selectors.EVENT_READ, self._reap)

    def serve(self) -> None:
        gc.freeze()     # everything imported so far stays shared with the children
        while True:
            for key, _ in self.selector.select():
                key.data(key.fileobj)

    def _accept(self, listener) -> None:
        conn, _ = listener.accept()
        self.selector.register(conn, selectors.EVENT_READ, self._request)

    def _request(self, conn: socket.socket) -> None:
        try:
            request, fds = receive(conn)
        except (OSError, ValueError):
            request, fds = None, []
        pid = self._pid_of(conn)
        if request is None or pid is not None or len(fds) != FDS_PER_REQUEST:
            for fd in fds:
                os.close(fd)
            self._hang_up(conn, pid)
            return
        pid = os.fork()
        if pid == 0:
            self._become_child(request, *fds)
        for fd in fds:
            os.close(fd)
        self.children[pid] = conn
        send(conn, {"pid": pid})

    def _pid_of(self, conn) -> int | None:
        return next((pid for pid, c in self.children.items() if c is conn), None)

    def _hang_up(self, conn: socket.socket, pid: int | None) -> None:
        """A client that hangs up (or speaks out of turn) takes its guest with it; the
        connection closes when that child is reaped."""
        self.selector.unregister(conn)
        if pid is None:
            conn.close()
            return
        try:
            os.kill(pid, signal.SIGTERM)    # the launcher stops its guest and cleans up
        except ProcessLookupError:
            pass

    def _reap(self, wakeup) -> None:
        os.read(self.wakeup_r, 4096)
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            if conn is not None:
                send(conn, {"status": status})
                if conn.fileno() in self.selector.get_map():
                    self.selector.unregister(conn)
                conn.close()

    def _become_child(self, request: dict, terminal: int, stderr: int) -> None:
        status = 1
        try:
            self._detach()
            _take_terminal(terminal, stderr)
            os.chdir(request.get("cwd") or "/")
            os.environ.clear()
            os.environ.update(request.get("env") or {})
            if request.get("netns"):
                from pyroute2 import netns
                netns.setns(request["netns"])
            sys.argv = [cli_restore.PROG, *request["argv"]]
            status = cli_restore.main(request["argv"])
        except SystemExit as done:      # argparse's usage errors
            status = done.code if isinstance(done.code, int) else 2
        except BaseException:
            traceback.print_exc()
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            os._exit(status)

    def _detach(self) -> None:
        """Leave the server behind: its sockets, its signal wiring, its frozen garbage."""
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_DFL)
        self.selector.close()
        self.listener.close()
        for conn in self.children.values():
            conn.close()
        os.close(self.wakeup_r)
        die_with_parent()


def _take_terminal(terminal: int, stderr: int) -> None:
    """The pty becomes the controlling terminal, stdin and stdout; stderr the launcher's log."""
    os.setsid()
    fcntl.ioctl(terminal, termios.TIOCSCTTY, 0)
    os.dup2(terminal, 0)
    os.dup2(terminal, 1)
    os.dup2(stderr, 2)
    for fd in (terminal, stderr):
        if fd > 2:
            os.close(fd)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python3 -m launcher.restore_server SOCKET", file=sys.stderr)
        return 2
    die_with_parent()
    for name in WARM_MODULES:
        importlib.import_module(name)
    snapshot.launcher_version()     # importlib.metadata, read once
    server = Server(args[0])
    print("ready", flush=True)      # the client starts restoring once it reads this
    server.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
