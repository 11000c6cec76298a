"""`lguest-harness snapshot DIR [boot flags] MEM_MB KERNEL [KERNEL ARGS...]`: boot, pause, save.

Boots exactly as `lguest-harness boot` (same flags; the console goes to stdout, stdin is not
read), waits for the ready marker (--ready-marker, default the harness initramfs's), then for the
shell's prompt after it (--prompt, default the harness shell's "# "; "" for none) and for
the console to be quiet for --settle seconds, so the shell waits for input, pauses the vCPU
and writes the snapshot to DIR (launcher.snapshot).
Exit status: 0 written; 1 bad input or the snapshot could not be written; otherwise the
guest ended before it was ready, with `boot`'s status for how it ended.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path


from launcher import cli
from launcher.hypervisor import backend_class
from launcher.hypervisor.base import EXIT_LAUNCHER_ERROR, Outcome
from launcher.hypervisor.errors import SnapshotUnsupported
from launcher.io.console import stdout_writer
from launcher.launcher import Launcher
from launcher.snapshot import SnapshotError

HELP = "boot a guest like `boot`, pause it once it is ready and write a snapshot to DIR"
PROG = "lguest-harness snapshot"
DEFAULT_READY_MARKER = "lguest-harness: ready"     # harness.initramfs.READY_MARKER (the launcher never imports it)
DEFAULT_PROMPT = "# "                               # harness.initramfs.PROMPT
DEFAULT_SETTLE = 0.5
POLL = 0.05


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", help="where to write the snapshot (must not exist, or be empty)")
    parser.add_argument("--settle", type=float, default=DEFAULT_SETTLE, metavar="SECONDS",
                        help=f"after the ready marker, wait until the console has been quiet this long "
                             f"(default {DEFAULT_SETTLE:g})")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, metavar="TEXT",
                        help=f"after the ready marker, wait for TEXT too (default {DEFAULT_PROMPT!r}; '' for none)")
    cli.configure(parser)
    parser.set_defaults(ready_marker=DEFAULT_READY_MARKER)


_stderr = cli.say_to_stderr(PROG)


class Pauser:
    """Asks the guest to pause once the marker, then the prompt, have been seen and the
    console has been quiet for `settle` seconds."""

    def __init__(self, marker: str, prompt: str, settle: float):
        self.waiting_for = [text.encode() for text in (marker, prompt) if text]
        self.settle = settle
        self.last_output = time.monotonic()
        self._window = b""
        self.done = threading.Event()

    @property
    def ready(self) -> bool:
        return not self.waiting_for

    def output(self, data: bytes) -> None:
        self.last_output = time.monotonic()
        self._window += data
        while self.waiting_for:
            found = self._window.find(self.waiting_for[0])
            if found < 0:
                self._window = self._window[-len(self.waiting_for[0]):]
                return
            self._window = self._window[found + len(self.waiting_for.pop(0)):]

    def watch(self, vm: Launcher) -> None:
        while not self.done.wait(POLL):
            if self.ready and time.monotonic() - self.last_output >= self.settle:
                vm.request_stop(Outcome.PAUSED, "ready: pausing for the snapshot")
                return


def snapshot(args) -> int:
    config = cli.config_from_args(args)
    if config.shares:   # refused before a boot is wasted; the bus refuses too (a Python caller)
        raise SnapshotUnsupported(f"--share={config.shares[0].source}:{config.shares[0].tag}: a virtio-fs "
                                  f"device's rings live in its virtiofsd process, which a snapshot cannot save")
    if config.cpus > 1:
        raise SnapshotError(f"--cpus={config.cpus}: snapshots hold one vCPU; boot the guest to snapshot with --cpus 1")
    bus_class = backend_class(config.backend).bus_for(config.transport, config.kernel)
    if not hasattr(bus_class, "save_state"):
        raise SnapshotUnsupported(f"{bus_class.__name__} cannot save its devices' state yet: a snapshot needs "
                                  f"another transport (--transport=mmio)")
    directory = Path(args.directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise SnapshotError(f"snapshot {directory}: exists and is not an empty directory")
    report = cli.command_report(PROG, args.verbose)
    pauser = Pauser(config.ready_marker or "", args.prompt, args.settle)
    out = stdout_writer()

    def console(data: bytes) -> None:
        pauser.output(data)
        out(data)
    with Launcher(config, report=report, console_out=console) as vm:
        watcher = threading.Thread(target=pauser.watch, args=(vm,), name="snapshot-pauser", daemon=True)
        watcher.start()
        try:
            stopped = vm.run()
        finally:
            pauser.done.set()
            watcher.join()
        if stopped.outcome is not Outcome.PAUSED:
            print(file=sys.stderr)
            _stderr(f"no snapshot: {stopped.outcome.text} before the ready marker {config.ready_marker!r}: "
                    f"{stopped.detail}")
            return stopped.outcome.exit_status or EXIT_LAUNCHER_ERROR
        started = time.monotonic()
        manifest = vm.save(directory)
    memory = manifest["memory"]
    print(file=sys.stderr)
    _stderr(f"snapshot written to {directory} in {time.monotonic() - started:.2f} s: guest ready after "
            f"{vm.marker.seen_at:.1f} s, {memory['size'] >> 20} MiB of memory ({memory['data_bytes'] >> 20} MiB "
            f"of it not zero), {len(manifest['devices'])} device(s)")
    return 0


def run(args) -> int:
    return cli.one_line_errors(snapshot, args, PROG)


def main(argv: list[str] | None = None) -> int:
    return cli.command_main(PROG, HELP, configure, run, argv)


if __name__ == "__main__":
    sys.exit(main())
