"""virtiofsd, the vhost-user backend of a virtio-fs device: started, watched and stopped here.

    daemon = Virtiofsd.start(source="/srv/share", read_only=True, name="fs share")
    daemon.frontend                     # a VhostUserFrontend, handshake done
    daemon.on_death = callback          # called once (from the watcher thread) if it dies
    daemon.close()                      # SIGTERM, wait, remove its socket directory

The binary is $LGUEST_HARNESS_VIRTIOFSD, else Debian's QEMU one (/usr/lib/qemu/virtiofsd),
else `virtiofsd` on PATH.  It listens on a socket in a private temporary directory
(--socket-path); we connect once it appears.  Sandboxing is virtiofsd's own default
(`-o sandbox=namespace`: mount, pid and net namespaces, pivot_root into the source), or
`-o sandbox=chroot` for a share of / itself (pivot_root cannot move the root onto itself).
This virtiofsd has no read-only option, so a read-only share runs it in a mount namespace of
its own where the source is bind-mounted read-only, recursively (launcher.io.ro_exec): a write
the guest sends fails with EROFS in the host kernel, whatever the guest's mount says.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

from launcher.io.processes import stop_process
from launcher.io.vhost_user import VhostUserError, VhostUserFrontend

CANDIDATES = ("/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd")
SOCKET_WAIT = 10.0
STOP_WAIT = 5.0
STDERR_TAIL = 400
PID_DIR = "/run/virtiofsd"      # where this virtiofsd puts its pid file (/var/run/virtiofsd)


class VirtiofsdError(VhostUserError):
    """virtiofsd is missing, would not start, or refused the handshake."""


def find_virtiofsd() -> str:
    named = os.environ.get("LGUEST_HARNESS_VIRTIOFSD")
    if named:
        if not os.access(named, os.X_OK):
            raise VirtiofsdError(f"LGUEST_HARNESS_VIRTIOFSD={named}: not an executable file")
        return named
    for path in CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    found = shutil.which("virtiofsd")
    if found:
        return found
    raise VirtiofsdError("virtiofsd not found (looked for " + ", ".join(CANDIDATES) + " and on PATH): "
                         "install Debian's qemu-system-common (apt-get install qemu-system-common) or set "
                         "LGUEST_HARNESS_VIRTIOFSD")


def check_source(source: str, flag: str = "--share") -> None:
    if not os.path.isdir(source):
        raise VirtiofsdError(f"{flag}: {source}: " + ("not a directory" if os.path.exists(source)
                                                       else "no such directory"))


class Virtiofsd:
    def __init__(self, process: subprocess.Popen, workdir: str, log_path: str, frontend: VhostUserFrontend,
                 name: str):
        self.process = process
        self.workdir = workdir
        self.log_path = log_path
        self.frontend = frontend
        self.name = name
        self.on_death = lambda reason: None
        self._closing = False
        self._watcher = threading.Thread(target=self._watch, name=f"{name}-watch", daemon=True)
        self._watcher.start()

    @classmethod
    def start(cls, source: str, *, read_only: bool = False, name: str = "virtiofsd",
              cache: str = "auto") -> "Virtiofsd":
        binary = find_virtiofsd()
        check_source(source)
        workdir = tempfile.mkdtemp(prefix="lh-virtiofsd-")
        sock_path, log_path = os.path.join(workdir, "vhost.sock"), os.path.join(workdir, "virtiofsd.log")
        command = [binary, f"--socket-path={sock_path}", "-o", f"source={os.path.abspath(source)}",
                   "-o", f"cache={cache}", "-o", "log_level=warn"]
        if os.path.realpath(source) == "/":
            # The namespace sandbox pivot_roots into the source, which cannot be the root
            # itself (EBUSY); sharing / leaves nothing for it to hide anyway.
            command += ["-o", "sandbox=chroot"]
        if read_only:
            # virtiofsd writes its socket here and its pid file under /run/virtiofsd: keep
            # those two writable when they sit inside the read-only tree (a share of /).
            os.makedirs(PID_DIR, exist_ok=True)
            keep = [arg for path in (workdir, PID_DIR) if _inside(path, source) for arg in ("--writable", path)]
            command = [sys.executable, "-m", "launcher.io.ro_exec", os.path.abspath(source), *keep, "--", *command]
        with open(log_path, "wb") as log:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                       close_fds=True, start_new_session=True,
                                       env={**os.environ, "PYTHONPATH": _package_root()})
        try:
            sock = _connect(sock_path, process, log_path, name)
            frontend = VhostUserFrontend(sock, name)
            try:
                frontend.handshake()
            except VhostUserError as err:
                sock.close()
                raise VirtiofsdError(f"{err}{_tail(log_path)}") from None
        except BaseException:
            stop_process(process, STOP_WAIT)
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        return cls(process, workdir, log_path, frontend, name)

    def _watch(self) -> None:
        status = self.process.wait()
        if not self._closing:
            self.on_death(f"{self.name} (pid {self.process.pid}) exited with status {status} while the guest "
                          f"was running{_tail(self.log_path)}")

    def close(self) -> None:
        self._closing = True
        stop_process(self.process, STOP_WAIT)
        self._watcher.join(STOP_WAIT)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _inside(path: str, root: str) -> bool:
    path, root = os.path.realpath(path), os.path.realpath(root)
    return os.path.commonpath([path, root]) == root


def _package_root() -> str:
    """So `python3 -m launcher.io.ro_exec` finds this very launcher (a source tree or installed)."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)


def _connect(path: str, process: subprocess.Popen, log_path: str, name: str) -> socket.socket:
    deadline = time.monotonic() + SOCKET_WAIT
    while True:
        if process.poll() is not None:
            raise VirtiofsdError(f"{name} exited with status {process.returncode} before listening{_tail(log_path)}")
        if os.path.exists(path):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                sock.connect(path)
                return sock
            except OSError:
                sock.close()
        if time.monotonic() > deadline:
            raise VirtiofsdError(f"{name} did not listen on {path} within {SOCKET_WAIT:g} s{_tail(log_path)}")
        time.sleep(0.02)


def _tail(log_path: str) -> str:
    try:
        with open(log_path, "rb") as log:
            text = log.read().decode(errors="replace").strip()
    except OSError:
        return ""
    text = " / ".join(line.strip() for line in text.splitlines() if line.strip())
    return f"; it said: {text[-STDERR_TAIL:]}" if text else ""
