"""`lguest-harness boot` on a backend whose devices sit on the lguest bus (lguest, fake):
the 2.6.39 Launcher's main(), run_guest() and restart_guest().

launcher.cli parses the command line and checks what every backend shares (MEM_MB, the
kernel file, --timeout), then hands over to run_lguest.  Here:

    devices from the flags (console first) -> guest memory (RAM + device pages) ->
    backend -> device page -> kernel, initrd, boot header -> LHREQ_INITIALIZE ->
    --chroot, then --username (initgroups, setresgid, setresuid) -> run the guest

--username and --chroot are checked before anything starts (an unknown user or a missing
directory is one line and exit 1) but applied only after the hypervisor is initialised, as
the original did.  A guest that asks for a reboot gets one the original's way: devices
stopped, every fd above stderr closed, the launcher exec'd again with its original argv.
"""
from __future__ import annotations

import dataclasses
import os
import pwd
import signal
import sys
import threading
from pathlib import Path
from typing import Callable

from launcher.devspec import BlockSpec, HostBackends, NetSpec, build_devices, close_devices, device_specs
from launcher.errors import LauncherError
from launcher.hypervisor import backend_class
from launcher.hypervisor.base import Outcome, Stopped
from launcher.io.console import stdout_writer
from launcher.launcher import BootFiles, Launcher, lguest_memory

PROG = "lguest-harness boot"


class UnknownUser(LauncherError):
    def __init__(self, name: str):
        super().__init__(f"--username={name}: no such user (getpwnam failed)")


class ChrootUnusable(LauncherError):
    """--chroot names no directory, or chroot/chdir failed."""


class PrivilegeDropFailed(LauncherError):
    """initgroups, setresgid or setresuid failed."""


class RestartFailed(LauncherError):
    """The guest asked for a reboot and the launcher could not exec itself again."""


@dataclasses.dataclass(frozen=True)
class Privileges:
    """What to do once the hypervisor is initialised: chroot, then become the user."""
    chroot: str | None = None
    user: pwd.struct_passwd | None = None

    @classmethod
    def from_args(cls, args) -> "Privileges":
        user = None
        if getattr(args, "username", None):
            try:
                user = pwd.getpwnam(args.username)
            except KeyError:
                raise UnknownUser(args.username) from None
        root = getattr(args, "chroot", None)
        if root is not None and not os.path.isdir(root):
            raise ChrootUnusable(f"--chroot={root}: no such directory")
        return cls(root, user)

    def apply(self, say: Callable[[str], None]) -> None:
        if self.chroot is not None:
            try:
                os.chroot(self.chroot)
                os.chdir("/")
            except OSError as err:
                raise ChrootUnusable(f'chroot("{self.chroot}") failed: {err.strerror}') from err
            say("chroot done")
        if self.user is not None:
            uid, gid = self.user.pw_uid, self.user.pw_gid
            try:
                os.initgroups(self.user.pw_name, gid)
                os.setresgid(gid, gid, gid)
                os.setresuid(uid, uid, uid)
            except OSError as err:
                raise PrivilegeDropFailed(f"dropping privileges to {self.user.pw_name}: {err.strerror}") from err
            say("Dropping privileges completed")


def original_argv() -> list[str]:
    """The command line this process was started with ("Save the args: we reboot by execing
    ourselves again"): the interpreter and all its arguments."""
    return [sys.executable, *sys.orig_argv[1:]]


def restart_launcher(argv: list[str], *, execv: Callable = os.execv, close_fds: bool = True) -> None:
    """restart_guest: close every fd above stderr, then exec argv afresh."""
    if close_fds:
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    try:
        execv(argv[0], argv)
    except OSError as err:      # e.g. the interpreter is not inside --chroot
        raise RestartFailed(f"could not exec {argv[0]} to restart the guest: {err.strerror}") from err


@dataclasses.dataclass
class LguestRun:
    """Everything run_lguest can be given instead of the real thing (tests inject these)."""
    backends: HostBackends | None = None           # device host sides (default: stdio, tap, file, urandom)
    out: Callable[[bytes], None] | None = None     # early console (default: stdout)
    err: object = None                             # where messages go (default: stderr)
    execv: Callable = os.execv                     # how a reboot re-executes us
    argv: list[str] | None = None                  # what it re-executes (default: original_argv())
    close_fds: bool = True
    backend_options: dict = dataclasses.field(default_factory=dict)


def run_lguest(args, mem_bytes: int, kernel: bytes, *, say: Callable[[str], None],
               deadline: float | None = None, env: LguestRun | None = None) -> int:
    """Boot on an lguest-bus backend; returns the exit status (LauncherError escapes)."""
    env = env or LguestRun()
    err = env.err or sys.stderr
    specs = device_specs(args)
    privileges = Privileges.from_args(args)
    initrd = Path(args.initrd) if getattr(args, "initrd", None) else None
    files = BootFiles(kernel, tuple(args.kernel_args or ()), initrd)
    memory = lguest_memory(mem_bytes)
    devices: list = []
    backend = None
    try:
        backend = backend_class(args.backend)(memory, None, ram_size=mem_bytes, **env.backend_options)
        devices = build_devices(specs, env.backends)
        launcher = Launcher(memory, mem_bytes, backend, devices, out=env.out or stdout_writer(), say=say,
                            after_initialize=lambda: privileges.apply(say),
                            labels=[_label(spec, device) for spec, device in zip(specs, devices)],
                            warn=lambda text: print(f"{PROG}: {text}", file=err, flush=True))
        launcher.setup_devices()
        launcher.initialize(launcher.load(files))
        stopped = _run(launcher, backend, deadline)
    finally:
        _close_all(devices, backend, memory)
    if stopped.outcome is Outcome.REBOOT:
        say("the guest asked for a restart: executing the launcher again")
        restart_launcher(env.argv or original_argv(), execv=env.execv, close_fds=env.close_fds)
    return _report(stopped, err)


def _close_all(devices: list, backend, memory) -> None:
    """Devices first (threads joined, backends closed, tty restored), then the host side."""
    try:
        close_devices(devices)
    finally:
        try:
            if backend is not None:
                backend.close()
        finally:
            memory.close()


def _label(spec, device) -> str:
    """The original's "device N: ..." wording."""
    if isinstance(spec, NetSpec):
        tap = getattr(device.backend, "name", "?")
        return f"tun {tap} attached to bridge: {spec.bridge}" if spec.bridge else f"tun {tap}: {spec.interface}"
    if isinstance(spec, BlockSpec):
        return f"virtblock {device.capacity} sectors" + (" (read-only)" if spec.read_only else "")
    return spec.describe()


def _run(launcher: Launcher, backend, deadline: float | None) -> Stopped:
    stop = lambda *_: backend.request_stop(Outcome.INTERRUPTED, "SIGTERM")  # noqa: E731
    previous = signal.signal(signal.SIGTERM, stop) if _on_main_thread() else None
    try:
        return launcher.run(deadline)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _report(stopped: Stopped, err) -> int:
    """The original always said why the guest died (errx "%s", reason); so do we."""
    outcome = stopped.outcome
    print(f"\r\n{PROG}: {outcome.text}: {stopped.detail}", file=err, flush=True)
    return outcome.exit_status

