"""Run QEMU for `lguest-harness boot --backend qemu` the way our launcher runs a guest.

QEMU's 8250 and its virtio console (hvc0) are socket pairs whose other ends QEMU inherits
(`-chardev socket,fd=N`); we relay them: the 8250 to our stdin/stdout (raw, as the KVM backend's
serial) through launcher.consolewatch, and hvc0 to a pty we own and announce as the launcher does
("virtio console (hvc0) on /dev/pts/N"), so the harness's command channel finds it.  QEMU's
virtconsole silently drops what its chardev cannot take at once (virtio-console.c, flush_buf), and
its pty backend what comes before anyone opens the pty; so QEMU's end gets a large send buffer,
we read it whenever it has data and hold what the pty reader has not taken yet.

The ending, as the launcher reports it: the kernel's "reboot: Power down" / "System halted"
(without ACPI, poweroff ends in hlt and QEMU would idle on: we stop it) -> 0; "Kernel panic"
-> 3 (panic=-1 reboots and -no-reboot makes QEMU exit; else after PANIC_GRACE); a reboot -> 0;
a reset without the kernel's message (triple fault) -> 6; the timeout -> 4; QEMU failing to
start -> 1 with its message.
"""
from __future__ import annotations

import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import termios
import time
import tty
from contextlib import ExitStack, contextmanager
from pathlib import Path

from launcher.cli import say_to_stderr
from launcher.consolewatch import ConsoleEvent, ConsoleWatcher, MarkerClock
from launcher.devspec import DeviceSpecError
from launcher.hypervisor.base import EXIT_LAUNCHER_ERROR, Outcome, Stopped
from launcher.io.processes import die_with_parent, stop_process

from harness.qemu import EXIT_USAGE, ChardevFds, QemuPlan, QemuUsage, Tap, available, plan

PROG = "lguest-harness boot"
PANIC_GRACE = 2.0           # after "Kernel panic", for its trace to reach the console
STOP_GRACE = 5.0
CHUNK = 65536
SNDBUF = 64 << 20           # QEMU's end: what the guest may write before we read it
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
ENDINGS = {ConsoleEvent.POWER_OFF: (Outcome.POWER_OFF, "the kernel printed 'reboot: Power down'"),
           ConsoleEvent.HALTED: (Outcome.HALTED, "the kernel printed 'System halted'")}


class _Interrupted(Exception):
    pass


class QemuFailed(Exception):
    """QEMU exited on its own before the guest said anything: its last words are the cause."""


class Pipe:
    """Bytes from src to dst.  bounded: read only once the last read is written out (input the
    guest takes at its pace); else read whenever there is data and hold it (QEMU's virtconsole
    would drop what its socket cannot take)."""

    def __init__(self, src: int, dst: int | None, seen=None, bounded: bool = True):
        self.src, self.dst, self.seen, self.bounded = src, dst, seen, bounded
        self.pending = bytearray()
        self.open = True

    def readable(self) -> bool:
        return self.open and not (self.bounded and self.pending)

    def pull(self) -> None:
        try:
            data = os.read(self.src, CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.open = False
            return
        if self.seen:
            self.seen(data)
        if self.dst is not None:
            self.pending += data

    def push(self) -> None:
        try:
            del self.pending[:os.write(self.dst, self.pending)]
        except BlockingIOError:
            pass
        except OSError:         # a reader that went away must not stop the guest
            self.pending.clear()


def run(args) -> int:
    say = say_to_stderr(PROG)
    qemu = available()
    if qemu is None:
        say("the qemu backend needs qemu-system-x86_64: apt-get install qemu-system-x86")
        return EXIT_LAUNCHER_ERROR
    with ExitStack() as stack:
        ours, theirs = zip(*(_socket_pair(stack) for _ in range(2)))
        fds = ChardevFds(serial=theirs[0].fileno(), hvc=theirs[1].fileno())
        try:
            the_plan = plan(args, fds, tap_prefix=f"lhq{os.getpid() % 100000}x", qemu=qemu)
        except QemuUsage as err:
            say(f"usage: {err}")
            return EXIT_USAGE
        except DeviceSpecError as err:
            say(str(err))
            return EXIT_LAUNCHER_ERROR
        return _boot(the_plan, args, say, stack, ours, theirs)


def _socket_pair(stack: ExitStack) -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    stack.callback(ours.close)
    stack.callback(theirs.close)
    try:
        theirs.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, SNDBUF)
    except PermissionError:     # without CAP_NET_ADMIN: as much as net.core.wmem_max allows
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
    ours.setblocking(False)
    return ours, theirs


def _boot(the_plan: QemuPlan, args, say, stack: ExitStack, ours, theirs) -> int:
    started = time.monotonic()
    marker = MarkerClock(args.ready_marker, started)
    if args.verbose:
        say("qemu: " + " ".join(the_plan.argv))
    try:
        for tap in the_plan.taps:
            stack.enter_context(_tap(tap, say if args.verbose else None))
    except (OSError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", b"") or b""
        say(f"cannot make the qemu backend's tap: {err} {detail.decode(errors='replace').strip()}")
        return EXIT_LAUNCHER_ERROR
    stack.enter_context(_signals_interrupt())
    proc = subprocess.Popen(the_plan.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, pass_fds=[s.fileno() for s in theirs],
                            preexec_fn=lambda: die_with_parent(signal.SIGKILL))
    stack.callback(stop_process, proc, STOP_GRACE)
    for sock in theirs:
        sock.close()            # QEMU holds them now: its exit is our EOF
    relay = Relay(proc, ours[0].fileno(), ours[1].fileno() if the_plan.hvc else None, marker)
    if relay.hvc_path:
        say(f"virtio console (hvc0) on {relay.hvc_path}")
    stack.enter_context(_raw_stdio())
    try:
        stopped = relay.run(started + args.timeout)
    except QemuFailed as err:
        say(f"qemu failed: {err}")
        return EXIT_LAUNCHER_ERROR
    return _report(stopped, args, started, marker, say)


@contextmanager
def _tap(tap: Tap, say):
    """A persistent tap in our namespace (QEMU opens it by name), removed afterwards."""
    def ip(*argv: str) -> None:
        subprocess.run(["ip", *argv], check=True, capture_output=True)
    ip("tuntap", "add", "dev", tap.name, "mode", "tap", "vnet_hdr")
    try:
        if tap.bridge:
            ip("link", "set", tap.name, "master", tap.bridge)
        else:
            ip("addr", "add", tap.address, "dev", tap.name)
        ip("link", "set", tap.name, "up")
        if say:
            say(f"tap {tap.name}: {tap.address or 'bridge ' + tap.bridge}")
        yield
    finally:
        subprocess.run(["ip", "link", "del", tap.name], capture_output=True)


@contextmanager
def _raw_stdio():
    """The 8250 is our stdin/stdout, raw, as the KVM backend's serial is."""
    saved, blocking = None, (os.get_blocking(0), os.get_blocking(1))
    if os.isatty(0):
        saved = termios.tcgetattr(0)
        tty.setraw(0, termios.TCSANOW)
    try:
        yield
    finally:
        if saved is not None:
            termios.tcsetattr(0, termios.TCSANOW, saved)
        os.set_blocking(0, blocking[0])
        os.set_blocking(1, blocking[1])


@contextmanager
def _signals_interrupt():
    def interrupt(signum, frame):
        raise _Interrupted(signal.Signals(signum).name)
    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Relay:
    """The select loop between QEMU's sockets, our stdio and the hvc0 pty."""

    def __init__(self, proc: subprocess.Popen, serial: int, hvc: int | None, marker: MarkerClock):
        self.proc, self.marker = proc, marker
        self.watcher = ConsoleWatcher()
        self.stderr_tail = b""
        for fd in (0, 1):
            os.set_blocking(fd, False)
        self.pipes = [Pipe(0, serial), Pipe(serial, 1, self._console)]
        self.hvc_path = None
        if hvc is not None:
            master, slave = pty.openpty()
            tty.setraw(slave, termios.TCSANOW)
            os.set_blocking(master, False)
            self.hvc_path, self._fds = os.ttyname(slave), (master, slave)   # we keep the slave open too
            self.pipes += [Pipe(hvc, master, bounded=False), Pipe(master, hvc)]
        self.stderr = Pipe(proc.stderr.fileno(), None, self._qemu_said)
        os.set_blocking(proc.stderr.fileno(), False)

    def _console(self, data: bytes) -> None:
        self.marker.feed(data, lambda: None)
        self.watcher.feed(data)

    def _qemu_said(self, data: bytes) -> None:
        self.stderr_tail = (self.stderr_tail + data)[-4096:]
        os.write(2, data)

    def describe_state(self) -> list[str]:
        """What SIGQUIT prints (as the launcher's state dump, which Guest.state_dump reads)."""
        names = ["stdin -> 8250", "8250 -> stdout", "hvc0 -> pty", "pty -> hvc0"]
        return ["launcher state dump:", f"qemu pid {self.proc.pid}, "
                + ("running" if self.proc.poll() is None else f"exited {self.proc.returncode}"),
                *(f"{name}: {'open' if p.open else 'closed'}, {len(p.pending)} bytes pending"
                  for name, p in zip(names, self.pipes)),
                "console events: " + (", ".join(e.value for e in self.watcher.events) or "none")]

    def run(self, deadline: float) -> Stopped:
        dump = lambda *_: print(f"{PROG}: " + "\n".join(self.describe_state()), file=sys.stderr, flush=True)  # noqa: E731
        previous = signal.signal(signal.SIGQUIT, dump)     # the guest runs on, as under the launcher
        try:
            return self._loop(deadline)
        except _Interrupted as why:
            return Stopped(Outcome.INTERRUPTED, f"signal {why}")
        finally:
            signal.signal(signal.SIGQUIT, previous)
            for fd in getattr(self, "_fds", ()):
                os.close(fd)

    def _loop(self, deadline: float) -> Stopped:
        panic_by = None
        while True:
            now = time.monotonic()
            if panic_by is None and self.watcher.seen(ConsoleEvent.PANIC):
                panic_by = now + PANIC_GRACE
            stopped = self._ended(panic_by)
            if stopped:
                return stopped
            if now >= deadline:
                return Stopped(Outcome.TIMEOUT, "the run reached its timeout")
            readers = [p.src for p in (*self.pipes, self.stderr) if p.readable()]
            writers = [p.dst for p in self.pipes if p.pending]
            try:
                ready_r, ready_w, _ = select.select(readers, writers, [], min(deadline - now, 0.5))
            except InterruptedError:
                continue
            for p in (*self.pipes, self.stderr):
                if p.src in ready_r and p.readable():
                    p.pull()
                if p.pending and p.dst in ready_w:
                    p.push()

    def _ended(self, panic_by: float | None) -> Stopped | None:
        for event, (outcome, detail) in ENDINGS.items():
            if self.watcher.seen(event):
                return Stopped(outcome, detail)
        exited = self.proc.poll() is not None and not self.pipes[1].open
        panicked = self.watcher.seen(ConsoleEvent.PANIC)
        if panicked and (exited or time.monotonic() >= panic_by):
            return Stopped(Outcome.PANIC, self.watcher.panic_line or "Kernel panic")
        if not exited:
            return None
        if self.watcher.seen(ConsoleEvent.RESTART):
            return Stopped(Outcome.REBOOT, "the kernel printed 'reboot: Restarting system'")
        if self.proc.returncode == 0:
            return Stopped(Outcome.GUEST_CRASH, "QEMU reset the guest without the kernel's reboot message "
                                                "(a triple fault?); -no-reboot ended it")
        said = self.stderr_tail.decode(errors="replace").strip().splitlines()
        why = f"QEMU exited with status {self.proc.returncode}" + (f": {said[-1]}" if said else "")
        if not self.watcher.tail():
            raise QemuFailed(why)
        return Stopped(Outcome.GUEST_CRASH, why)


def _report(stopped: Stopped, args, started: float, marker: MarkerClock, say) -> int:
    outcome, detail = stopped.outcome, stopped.detail
    if outcome is Outcome.TIMEOUT:
        detail = f"no end within {args.timeout:g} s"
    print(f"\r\n{PROG}: {outcome.text}: {detail}", file=sys.stderr, flush=True)
    if args.stats_json:
        figures = {"outcome": outcome.name, "exit_status": outcome.exit_status, "detail": detail,
                   "wall_seconds": time.monotonic() - started, "seconds_in_run": None, "cpu_in_run": None,
                   "exits": {}, "ready_wall_seconds": marker.seen_at, "ready_seconds_in_run": None,
                   "vmm": "qemu"}
        try:
            Path(args.stats_json).write_text(json.dumps(figures, indent=1) + "\n")
        except OSError as exc:
            say(f"cannot write --stats-json {args.stats_json}: {exc.strerror}")
    return outcome.exit_status

