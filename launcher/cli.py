"""`lguest-harness boot`: the lguest Launcher's command line, on any hypervisor backend.

    lguest-harness boot [--verbose] [--tunnet=(IP:MAC|bridge:NAME:MAC)] [--block=FILE]
                        [--block-ro=FILE] [--rng] [--initrd=FILE] [--username=USER]
                        [--chroot=DIR] [--backend {fake,kvm,lguest}] [--timeout SECONDS]
                        MEM_MB KERNEL [KERNEL ARGS...]

On the lguest and fake backends the devices sit on the lguest bus (launcher.lguest_boot);
on kvm they sit on virtio-mmio.

Exit status: 0 the guest powered off, halted or rebooted; 1 bad input or launcher
setup failure (one line on stderr); 2 usage error; 3 kernel panic (seen on the console);
4 timeout; 5 an instruction the host could not emulate; 6 the guest crashed (triple
fault, failed VM entry, other KVM internal error); 130 interrupted (SIGINT/SIGTERM or
three ^C within a second on a terminal).
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from native.build import NativeBuildError

from launcher.devspec import add_device_arguments
from launcher.errors import LauncherError
from launcher.hypervisor import BACKENDS, backend_bus, backend_class, default_backend
from launcher.hypervisor.base import EXIT_LAUNCHER_ERROR, BootSpec, Notify, Outcome, Stopped
from launcher.io.console import ConsoleInput, stdout_writer
from launcher.lguest_boot import Privileges
from launcher.loader import BootParams, Cmdline, load_initrd, load_kernel_bytes, read_kernel
from launcher.memory import GuestMemory
from launcher.symbols import SystemMap

HELP = "boot a Linux kernel (vmlinux or bzImage) under a hypervisor backend"
PROG = "lguest-harness boot"
DEFAULT_TIMEOUT = 600.0
MIN_MEM_MB = 2
MAX_MEM_MB = 3072  # below the 32-bit PCI hole, where KVM's TSS pages live


class UsageError(LauncherError):
    """A command-line value is out of range or not yet supported."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="say what the launcher does")
    parser.add_argument("--initrd", metavar="FILE", help="initial ram disk, placed at the top of guest RAM")
    parser.add_argument("--backend", choices=sorted(BACKENDS), default=default_backend(),
                        help="hypervisor backend (default: kvm where /dev/kvm exists)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help=f"end the run after this long (default {DEFAULT_TIMEOUT:g}); exit status 4")
    parser.add_argument("--system-map", metavar="FILE", help="System.map for crash reports (default: beside KERNEL)")
    parser.add_argument("--stats-json", metavar="FILE",
                        help="write the run's figures (outcome, wall and in-hypervisor seconds, exits) as JSON")
    parser.add_argument("--ready-marker", metavar="TEXT",
                        help="record when TEXT first appears on the console (in --stats-json)")
    parser.add_argument("--username", metavar="USER", help="once the hypervisor is set up, become USER")
    parser.add_argument("--chroot", metavar="DIR", help="once the hypervisor is set up, chroot to DIR")
    add_device_arguments(parser)
    parser.add_argument("--hvc", choices=("pty", "stdio", "none"), default=None,
                        help="kvm: the virtio console (hvc0) on a new pty (default when devices are given), "
                             "on stdio (the 8250 then gets no input), or none")
    parser.add_argument("mem_mb", metavar="MEM_MB", help="guest memory in MiB")
    parser.add_argument("kernel", metavar="KERNEL", help="ELF vmlinux or bzImage")
    parser.add_argument("kernel_args", metavar="KERNEL ARGS", nargs=argparse.REMAINDER,
                        help="the guest kernel's command line")


def _mem_bytes(text: str) -> int:
    try:
        mem_mb = int(text, 0)
    except ValueError:
        raise UsageError(f"MEM_MB must be a whole number of MiB, not {text!r}") from None
    if not MIN_MEM_MB <= mem_mb <= MAX_MEM_MB:
        raise UsageError(f"MEM_MB must be between {MIN_MEM_MB} and {MAX_MEM_MB}, not {mem_mb}")
    return mem_mb << 20


class MarkerClock:
    """Notes when a marker first shows up in console output (which may split it across writes)."""

    def __init__(self, marker: str | None, started: float):
        self.marker = marker.encode() if marker else None
        self.started = started
        self._window = b""
        self.seen_at: float | None = None
        self.in_run_at: float | None = None

    def feed(self, data: bytes, seconds_in_run) -> None:
        if self.marker is None or self.seen_at is not None:
            return
        self._window = (self._window + data)[-(len(self.marker) + len(data)):]
        if self.marker in self._window:
            self.seen_at = time.monotonic() - self.started
            self.in_run_at = seconds_in_run()


class Session:
    """One boot: builds guest memory and backend, loads, runs, always cleans up."""

    def __init__(self, args, err=None):
        self.args, self.err = args, err or sys.stderr
        self.verbose = args.verbose
        self.started = time.monotonic()
        self.marker = MarkerClock(getattr(args, "ready_marker", None), self.started)
        self.backend = None
        self.virtio = None      # kvm: the devices on virtio-mmio (launcher.hypervisor.kvm_virtio)
        self.privileges = Privileges()  # --chroot/--username, applied after initialize

    def say(self, text: str) -> None:
        if self.verbose:
            print(f"{PROG}: {text}", file=self.err, flush=True)

    def run(self) -> int:
        args = self.args
        if args.timeout <= 0:
            raise UsageError(f"--timeout must be positive, not {args.timeout:g}")
        size = _mem_bytes(args.mem_mb)
        kernel = read_kernel(Path(args.kernel))
        if backend_bus(args.backend) == "lguest":
            from launcher.lguest_boot import run_lguest
            return run_lguest(args, size, kernel, say=self.say, deadline=time.monotonic() + args.timeout)
        self.privileges = Privileges.from_args(args)
        with GuestMemory(size) as memory:
            self.say(f"guest memory: {size >> 20} MiB at host {memory.host_address:#x}")
            backend = backend_class(args.backend)(memory, console_out=self._console_out(),
                                                  system_map=self._system_map())
            self.backend = backend
            with backend:
                try:
                    return self._boot(memory, backend, kernel)
                finally:
                    if self.virtio is not None:
                        self.virtio.close()     # threads joined and ring views dropped before memory goes

    def _announce(self, text: str) -> None:
        print(f"{PROG}: {text}", file=self.err, flush=True)

    def _console_out(self):
        write = stdout_writer()
        if self.marker.marker is None:
            return write

        def out(data: bytes) -> None:
            write(data)
            self.marker.feed(data, lambda: self.backend.stats.seconds_in_run)
        return out

    def _system_map(self) -> SystemMap | None:
        if self.args.system_map:
            try:
                return SystemMap.parse(Path(self.args.system_map).read_text(errors="replace"))
            except OSError as exc:
                raise UsageError(f"cannot read --system-map {self.args.system_map}: {exc.strerror}") from exc
        return SystemMap.beside(Path(self.args.kernel))

    def _boot(self, memory, backend, kernel: bytes) -> int:
        layout = backend.boot_layout()
        result = load_kernel_bytes(memory, kernel, prefer_elf=layout.prefer_elf)
        self.say(f"kernel: {result.kind.value}" + (f", {result.compression} payload" if result.compression else "")
                 + f", entry {result.entry:#x}")
        for seg in result.segments:
            self.say(f"  segment at {seg.paddr:#x}: {seg.filesz:#x} bytes from the file, {seg.memsz:#x} in memory")
        ramdisk = (0, 0)
        if self.args.initrd:
            placed = load_initrd(memory, Path(self.args.initrd), kernel_end=result.end, max_end=layout.initrd_max_end)
            ramdisk = (placed.addr, placed.size)
            self.say(f"initrd {self.args.initrd}: {placed.size:#x} bytes at {placed.addr:#x}")
        cmdline = self._cmdline(backend, layout.cmdline_capacity)
        if backend.name == "kvm":
            from launcher.hypervisor.kvm_virtio import attach_from_args
            self.virtio = attach_from_args(self.args, backend, memory, say=self.say, announce=self._announce)
            if self.virtio is not None:
                self.virtio.add_to_cmdline(cmdline)
                self.say(f"command line with devices: {cmdline}")
        memory.write(layout.cmdline, cmdline.as_bytes())
        memory.write(layout.boot_params, BootParams(
            cmd_line_ptr=layout.cmdline, e820=layout.e820, hardware_subarch=layout.hardware_subarch,
            loadflags=layout.loadflags, version=layout.version, ramdisk_image=ramdisk[0],
            ramdisk_size=ramdisk[1], setup_header=result.setup_header).render())
        for entry in layout.e820:
            self.say(f"e820: {entry.addr:#011x}-{entry.addr + entry.size - 1:#011x} {entry.type.name}")
        backend.initialize(BootSpec(result.entry, layout.boot_params, result.kind))
        self.privileges.apply(self.say)     # as the original: only once the hypervisor is set up
        return self._run(backend)

    def _cmdline(self, backend, capacity: int) -> Cmdline:
        cmdline = Cmdline(capacity)
        if self.args.kernel_args:
            cmdline.insert_str(" ".join(self.args.kernel_args))
        for addition in backend.cmdline_additions():
            key = addition.option.split("=", 1)[0]
            if cmdline.has(key):
                self.say(f"keeping your {key}= (this host would add {addition.option}: {addition.reason})")
                continue
            cmdline.insert_str(addition.option)
            self.say(f"adding {addition.option}: {addition.reason}")
        self.say(f"command line: {cmdline}")
        return cmdline

    def _run(self, backend) -> int:
        console = ConsoleInput(backend.send_console_input,
                               lambda: backend.request_stop(Outcome.INTERRUPTED, "three ^C within a second"))
        previous = signal.signal(signal.SIGTERM, lambda *_: backend.request_stop(Outcome.INTERRUPTED, "SIGTERM"))
        deadline = time.monotonic() + self.args.timeout
        try:
            if getattr(self.args, "hvc", None) != "stdio":
                console.start()
            event = backend.run(deadline)
            while isinstance(event, Notify):
                self.say(f"ignoring a notification at {event.addr:#x}: no device claims it")
                event = backend.run(deadline)
        finally:
            console.restore()
            signal.signal(signal.SIGTERM, previous)
        return self._report(event, backend)

    def _report(self, event: Stopped, backend) -> int:
        outcome = event.outcome
        stats = getattr(backend, "stats", None)
        if stats is not None:
            self.say(f"{stats.seconds_in_run:.2f} s inside the hypervisor; exits: "
                     + ", ".join(f"{k}={v}" for k, v in sorted(stats.exits.items())))
        if outcome.exit_status == 0:
            self.say(f"{outcome.text} ({event.detail})")
        else:
            detail = event.detail
            if outcome is Outcome.TIMEOUT:
                detail = f"no end within {self.args.timeout:g} s"
            print(f"\r\n{PROG}: {outcome.text}: {detail}", file=self.err, flush=True)
        if getattr(self.args, "stats_json", None):
            self._write_stats(event, stats)
        return outcome.exit_status

    def _write_stats(self, event: Stopped, stats) -> None:
        figures = {
            "outcome": event.outcome.name, "exit_status": event.outcome.exit_status, "detail": event.detail,
            "wall_seconds": time.monotonic() - self.started,
            "seconds_in_run": stats.seconds_in_run if stats else None,
            "cpu_in_run": stats.cpu_in_run if stats else None,
            "exits": dict(stats.exits) if stats else {},
            "ready_wall_seconds": self.marker.seen_at, "ready_seconds_in_run": self.marker.in_run_at,
        }
        try:
            Path(self.args.stats_json).write_text(json.dumps(figures, indent=1) + "\n")
        except OSError as exc:
            print(f"{PROG}: cannot write --stats-json {self.args.stats_json}: {exc.strerror}", file=self.err)


def run(args) -> int:
    try:
        return Session(args).run()
    except LauncherError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr, flush=True)
        return EXIT_LAUNCHER_ERROR
    except NativeBuildError as exc:  # no compiler or headers for the KVM bindings
        print(f"{PROG}: {exc}", file=sys.stderr, flush=True)
        return EXIT_LAUNCHER_ERROR


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=HELP)
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
