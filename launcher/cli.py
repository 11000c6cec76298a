"""`lguest-harness boot`: the lguest Launcher's command line, on any hypervisor backend.

    lguest-harness boot [--verbose] [--tunnet=(IP:MAC|bridge:NAME:MAC)] [--block=FILE]
                        [--block-ro=FILE] [--rng] [--initrd=FILE] [--username=USER]
                        [--chroot=DIR] [--backend {fake,kvm,lguest}] [--timeout SECONDS]
                        MEM_MB KERNEL [KERNEL ARGS...]

This module only parses and reports: flags -> launcher.config.LaunchConfig -> one
launcher.launcher.Launcher run -> exit status and message.  Which bus the devices sit on
(the lguest device page, virtio-mmio) and what a reboot does are the backend's to say.

Exit status: 0 the guest powered off, halted or rebooted; 1 bad input or launcher
setup failure (one line on stderr); 2 usage error; 3 kernel panic (seen on the console);
4 timeout; 5 an instruction the host could not emulate; 6 the guest crashed (triple
fault, failed VM entry, other KVM internal error); 130 interrupted (SIGINT/SIGTERM or
three ^C within a second on a terminal).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from native.build import NativeBuildError

from launcher.config import DEFAULT_TIMEOUT, HVC_CHOICES, TRANSPORT_CHOICES, LaunchConfig, UsageError, parse_mem_mb
from launcher.devspec import add_device_arguments, flag_specs
from launcher.errors import LauncherError
from launcher.hypervisor import BACKENDS, backend_class, default_backend
from launcher.hypervisor import mptable
from launcher.hypervisor.base import EXIT_LAUNCHER_ERROR, Outcome, Stopped
from launcher.launcher import Launcher
from launcher.transports.bus import Report

HELP = "boot a Linux kernel (vmlinux or bzImage) under a hypervisor backend"
PROG = "lguest-harness boot"

__all__ = ["UsageError", "configure", "config_from_args", "main", "run"]


def exit_statuses() -> str:
    """The exit statuses, from the outcomes themselves (shown by --help)."""
    rows = [(EXIT_LAUNCHER_ERROR, "bad input or launcher setup failure (one line on stderr)"),
            (2, "usage error")]
    for outcome in Outcome:
        rows.append((outcome.exit_status, outcome.text))
    merged: dict[int, list[str]] = {}
    for status, text in rows:
        merged.setdefault(status, []).append(text)
    return "exit status:\n" + "\n".join(f"  {status:<4} {'; '.join(texts)}" for status, texts in sorted(merged.items()))


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = exit_statuses()
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("-v", "--verbose", action="store_true", help="say what the launcher does")
    parser.add_argument("--initrd", metavar="FILE", help="initial ram disk, placed at the top of guest RAM")
    parser.add_argument("--backend", choices=sorted(BACKENDS), default=default_backend(),
                        help="hypervisor backend (default: kvm where /dev/kvm exists)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help=f"end the run after this long (default {DEFAULT_TIMEOUT:g}; inf: no limit); exit status 4")
    parser.add_argument("--cpus", type=int, default=1, metavar="N",
                        help=f"vCPUs (default 1; kvm: up to {mptable.max_cpus()}, each a thread, announced in an MP table)")
    parser.add_argument("--system-map", metavar="FILE", help="System.map for crash reports (default: beside KERNEL)")
    parser.add_argument("--stats-json", metavar="FILE",
                        help="write the run's figures (outcome, wall and in-hypervisor seconds, exits) as JSON")
    parser.add_argument("--ready-marker", metavar="TEXT",
                        help="record when TEXT first appears on the console (in --stats-json)")
    parser.add_argument("--username", metavar="USER", help="once the hypervisor is set up, become USER")
    parser.add_argument("--chroot", metavar="DIR", help="once the hypervisor is set up, chroot to DIR")
    add_device_arguments(parser)
    parser.add_argument("--hvc", choices=HVC_CHOICES, default=None,
                        help="kvm: the virtio console (hvc0) on a new pty (default when devices are given), "
                             "on stdio (the 8250 then gets no input), or none")
    parser.add_argument("--transport", choices=TRANSPORT_CHOICES, default=None,
                        help="kvm: virtio-mmio (virtio_mmio.device= on the command line) or virtio-pci; default "
                             "pci when the config or System.map beside KERNEL shows no virtio-mmio "
                             "command-line devices, else mmio")
    parser.add_argument("mem_mb", metavar="MEM_MB", help="guest memory in MiB")
    parser.add_argument("kernel", metavar="KERNEL", help="ELF vmlinux or bzImage")
    parser.add_argument("kernel_args", metavar="KERNEL ARGS", nargs=argparse.REMAINDER,
                        help="the guest kernel's command line")


def config_from_args(args) -> LaunchConfig:
    """The flags, one to one."""
    optional = lambda value: Path(value) if value else None  # noqa: E731
    return LaunchConfig(
        mem_mb=parse_mem_mb(args.mem_mb), kernel=Path(args.kernel), kernel_args=tuple(args.kernel_args or ()),
        initrd=optional(args.initrd), devices=tuple(flag_specs(args)), backend=args.backend, timeout=args.timeout,
        hvc=args.hvc, transport=args.transport, username=args.username, chroot=args.chroot,
        system_map=optional(args.system_map), ready_marker=args.ready_marker, cpus=args.cpus)


def say_to_stderr(prog: str):
    """A command's one-line messages: "PROG: text" on stderr."""
    return lambda text: print(f"{prog}: {text}", file=sys.stderr, flush=True)


def command_report(prog: str, verbose: bool) -> Report:
    """--verbose lines and always-shown lines, both on stderr under the command's name."""
    tell = say_to_stderr(prog)
    return Report(say=tell if verbose else Report.quiet, tell=tell)


def one_line_errors(action, args, prog: str = PROG) -> int:
    """Run a command; a LauncherError (or no compiler for the KVM bindings) is one line and status 1."""
    try:
        return action(args)
    except (LauncherError, NativeBuildError) as exc:
        say_to_stderr(prog)(str(exc))
        return EXIT_LAUNCHER_ERROR


def command_main(prog: str, help_text: str, configure_parser, run_args, argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=help_text)
    configure_parser(parser)
    return run_args(parser.parse_args(argv))


_stderr = say_to_stderr(PROG)


def boot(args, **launcher_options) -> int:
    """Parse, run one guest, report; LauncherError escapes (run() turns it into one line)."""
    own_vmm = getattr(backend_class(args.backend), "run_vmm", None)
    if own_vmm is not None:     # a backend that is a whole VMM (the harness's qemu) takes the flags as parsed
        return own_vmm(args)
    config = config_from_args(args)
    report = command_report(PROG, args.verbose)
    return run_to_the_end(lambda: Launcher(config, report=report, **launcher_options), args)


def run_to_the_end(open_launcher, args, prog: str = PROG) -> int:
    """Run one guest and say why it ended -- before a failed close's error, not instead of it:
    a guest that died and left a service thread stuck is reported as both, cause first."""
    stopped = None
    try:
        with open_launcher() as vm:
            stopped = vm.run()
    except LauncherError:
        if stopped is not None:
            report_outcome(stopped, vm, args, prog)
        raise
    return report_outcome(stopped, vm, args, prog)


def report_outcome(stopped: Stopped, vm: Launcher, args, prog: str = PROG) -> int:
    """The original always said why the guest ended (errx "%s", reason); so do we."""
    outcome, detail, stats = stopped.outcome, stopped.detail, vm.stats
    if args.verbose:
        print(f"{prog}: {stats.seconds_in_run:.2f} s inside the hypervisor; exits: "
              + ", ".join(f"{k}={v}" for k, v in sorted(stats.exits.items())), file=sys.stderr, flush=True)
    if outcome is Outcome.TIMEOUT:
        detail = f"no end within {args.timeout:g} s"
    print(f"\r\n{prog}: {outcome.text}: {detail}", file=sys.stderr, flush=True)
    if args.stats_json:
        _write_stats(Path(args.stats_json), stopped, vm)
    return outcome.exit_status


def _write_stats(path: Path, stopped: Stopped, vm: Launcher) -> None:
    stats = vm.stats
    figures = {
        "outcome": stopped.outcome.name, "exit_status": stopped.outcome.exit_status, "detail": stopped.detail,
        "wall_seconds": time.monotonic() - vm.started,
        "seconds_in_run": stats.seconds_in_run, "cpu_in_run": stats.cpu_in_run, "exits": dict(stats.exits),
        "ready_wall_seconds": vm.marker.seen_at, "ready_seconds_in_run": vm.marker.in_run_at,
    }
    try:
        path.write_text(json.dumps(figures, indent=1) + "\n")
    except OSError as exc:
        _stderr(f"cannot write --stats-json {path}: {exc.strerror}")


def run(args) -> int:
    return one_line_errors(boot, args)


def main(argv: list[str] | None = None) -> int:
    return command_main(PROG, HELP, configure, run, argv)


if __name__ == "__main__":
    sys.exit(main())
