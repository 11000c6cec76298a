"""`lguest-harness bench WHAT`: benchmarks that print figures (never timed tests).

One module per benchmark (blk, boot, console, fs, net, restore, vring), each with main(args); runner holds what
the guest benchmarks (blk, net) share: booting a recipe guest and reading the launcher's CPU.
"""
from __future__ import annotations

import importlib

HELP = "run a benchmark and print its figures"

BENCHMARKS = {
    "blk": "harness.bench.blk",
    "boot": "harness.bench.boot",
    "console": "harness.bench.console",
    "fs": "harness.bench.fs",
    "net": "harness.bench.net",
    "restore": "harness.bench.restore",
    "vring": "harness.bench.vring",
}


def configure(parser) -> None:
    parser.add_argument("what", choices=sorted(BENCHMARKS), help="which benchmark")
    parser.add_argument("--runs", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--mib", type=int, default=None, help="console: MiB of stdout, put and get (default 16); fs: MiB of the file the guest cats (default 64)")
    parser.add_argument("--backend", action="append", choices=("fake", "kvm", "qemu"),
                        help="boot, console: only this backend (repeatable; default all)")


def run(args) -> int:
    module = importlib.import_module(BENCHMARKS[args.what])
    return module.main(args)
