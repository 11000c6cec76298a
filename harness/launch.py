"""Boot a guest with `lguest-harness boot` under pexpect and hand back a Guest.

The launcher's own log (stderr, --verbose) goes to a file of its own so the console
stream stays the guest's; both are kept for failure reports.

On backend "fake" the guest is harness.fakes.lguest_host's scripted guest, booted through
the real loader with the same kernel (the recipe vmlinux loads like any other; the fake
guest never runs its code) and initramfs; `fake.shell` on its command line gives it the
tiny shell (harness.fakes.fake_shell) that prints READY_MARKER and answers Guest.run.

With `channel` (the default) the guest gets the command channel (harness.channel): on kvm the
launcher puts hvc0 on a pty (--hvc=pty) and `lhagent=hvc0` tells /init to start lh-agent there;
on the fake backend `lhagent=console` makes the fake shell announce the same protocol on its
console.  Guest.wait_ready then opens the channel.  The lguest backend has only its virtio
console (no 8250 beside it): there, and with channel=False, Guest.run types on the console.
"""
from __future__ import annotations

import itertools
import os
import shlex
import sys
import termios
from dataclasses import dataclass
from pathlib import Path

import pexpect

from harness.console import Guest
from harness.initramfs import AGENT_PARAM

DEFAULT_CMDLINE = ("console=ttyS0", "panic=-1", "quiet")
FAKE_SHELL = "fake.shell"       # the fake guest's shell (harness.fakes.fake_shell)
# How long the fake guest waits for each device answer: its 5 s default suits unit tests, not
# a guest in an emulated L1 (the nested stage), where a service thread's first run can take that.
FAKE_DEVICE_WAIT = "fake.timeout=60"
_serial = itertools.count(1)


@dataclass(frozen=True)
class GuestSpec:
    """Everything that decides what a booted guest looks like (hashable: guests are shared by it)."""

    kernel: Path
    initrd: Path | None = None
    mem: int = 64
    cmdline: tuple[str, ...] = DEFAULT_CMDLINE
    backend: str | None = None
    block: tuple[str, ...] = ()
    net: tuple[str, ...] = ()          # --tunnet values
    rng: bool = False
    share: tuple[str, ...] = ()        # --share values (HOSTDIR:TAG[:ro])
    extra_args: tuple[str, ...] = ()
    netns: str | None = None          # run the launcher inside this network namespace
    timeout: float = 900.0
    channel: bool = True              # commands over the virtio console (harness.channel)
    cpus: int = 1                     # --cpus

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "harness.cli", "boot", "--verbose", "--timeout", f"{self.timeout:g}"]
        if self.backend:
            argv += ["--backend", self.backend]
        if self.initrd:
            argv += ["--initrd", str(self.initrd)]
        argv += [f"--block={b}" for b in self.block]
        argv += [f"--tunnet={n}" for n in self.net]
        argv += ["--rng"] if self.rng else []
        argv += [f"--share={s}" for s in self.share]
        argv += [f"--cpus={self.cpus}"] if self.cpus != 1 else []
        argv += ["--hvc=pty"] if self.agent_console() == "hvc0" else []
        argv += [*self.extra_args, str(self.mem), str(self.kernel), *self.kernel_args()]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        return argv

    def kernel_args(self) -> tuple[str, ...]:
        """The guest's command line: cmdline, plus fake.shell and a patient fake.timeout on the
        fake backend, plus where the command channel's agent goes."""
        args = self.cmdline
        where = self.agent_console()
        if where and not any(a.startswith(f"{AGENT_PARAM}=") for a in args):
            args = (*args, f"{AGENT_PARAM}={where}")
        if self.backend == "fake" and FAKE_SHELL not in args:
            args = (*args, FAKE_SHELL)
        if self.backend == "fake" and not any(a.startswith("fake.timeout=") for a in args):
            args = (*args, FAKE_DEVICE_WAIT)
        return args

    def agent_console(self) -> str | None:
        """Where the channel's agent runs: hvc0 (kvm), console (fake), or None (no channel)."""
        if not self.channel:
            return None
        return {None: "hvc0", "kvm": "hvc0", "qemu": "hvc0", "fake": "console"}.get(self.backend)


def _guest_bytes_unchanged() -> None:
    """In the launcher's process, before exec: no output processing on its terminal.

    The lguest-bus console (fake, lguest) turns off only ISIG, ICANON and ECHO, as the
    original did, so the pty's ONLCR would turn the guest's "\\r\\n" into "\\r\\r\\n";
    the KVM serial console goes fully raw itself.  Either way the guest's bytes reach us
    unchanged."""
    output_unprocessed(0)


def output_unprocessed(fd: int) -> None:
    """Turn off output processing (OPOST) on the terminal fd: see _guest_bytes_unchanged."""
    attrs = termios.tcgetattr(fd)
    attrs[1] &= ~termios.OPOST
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def boot(spec: GuestSpec, log_dir: Path, name: str | None = None, wait: bool = True,
         ready_timeout: float = 300) -> Guest:
    """Start the launcher for spec; with wait, return once the guest shell is up."""
    name = name or f"guest{next(_serial)}"
    log_dir.mkdir(parents=True, exist_ok=True)
    launcher_log = log_dir / f"{name}.launcher.log"
    command = f"exec {shlex.join(spec.argv())} 2>{shlex.quote(str(launcher_log))}"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    child = pexpect.spawn("/bin/sh", ["-c", command], encoding="utf-8", codec_errors="replace",
                          env=env, dimensions=(50, 200), preexec_fn=_guest_bytes_unchanged)
    guest = Guest(child, name=name, launcher_log=launcher_log)
    if wait:
        try:
            guest.wait_ready(timeout=ready_timeout, channel_expected=spec.agent_console() is not None)
        except BaseException:
            guest.close()
            raise
    return guest
