"""`lguest-harness restore DIR [--block=FILE ...] [--timeout S] [--stats-json FILE]`: continue a snapshot.

The guest carries on from where `lguest-harness snapshot` paused it, with the console on
stdio exactly as under `boot` (same exit statuses).  Guest memory is mapped copy-on-write
from DIR, so DIR is never written and any number of guests can be restored from it.
Block devices: each --block=FILE / --block-ro=FILE, in order, replaces the next block
device's backing (used in place; same size and writability as the snapshot's); the rest
are fresh copies of the snapshot's images (read-only ones are used in place, read-only),
removed when the launcher exits.  A bad snapshot is one line and exit status 1, before
any guest state exists.
"""
from __future__ import annotations

import argparse
import sys


from launcher import cli
from launcher.config import DEFAULT_TIMEOUT
from launcher.launcher import Launcher
from launcher.snapshot import DiskOverride

HELP = "run a guest from a snapshot directory, console on stdio as under `boot`"
PROG = "lguest-harness restore"
DISKS = "disk_overrides"


class _Disk(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        disks = list(getattr(namespace, DISKS, None) or [])
        disks.append(DiskOverride(values, read_only=option_string == "--block-ro"))
        setattr(namespace, DISKS, disks)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="say what the launcher does")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help=f"end the run after this long (default {DEFAULT_TIMEOUT:g}); exit status 4")
    parser.add_argument("--stats-json", metavar="FILE",
                        help="write the run's figures (outcome, wall and in-hypervisor seconds, exits) as JSON")
    parser.add_argument("--block", "--block-ro", metavar="FILE", action=_Disk, dest=DISKS,
                        help="back the next block device with FILE, used in place (--block-ro for a read-only one)")
    parser.set_defaults(**{DISKS: []})
    parser.add_argument("directory", metavar="DIR", help="a directory written by `lguest-harness snapshot`")


_stderr = cli.say_to_stderr(PROG)


def restore(args) -> int:
    report = cli.command_report(PROG, args.verbose)
    return cli.run_to_the_end(lambda: Launcher.restore(args.directory, disks=tuple(args.disk_overrides),
                                                      timeout=args.timeout, report=report), args, PROG)


def run(args) -> int:
    return cli.one_line_errors(restore, args, PROG)


def main(argv: list[str] | None = None) -> int:
    return cli.command_main(PROG, HELP, configure, run, argv)


if __name__ == "__main__":
    sys.exit(main())
