"""`lguest-harness bench WHAT`: benchmarks that print figures (never timed tests)."""
from __future__ import annotations

import importlib

HELP = "run a benchmark and print its figures"

BENCHMARKS = {
    "blk": "harness.bench_blk",
    "boot": "harness.bench_boot",
    "net": "harness.bench_net",
    "vring": "harness.bench_vring",
}


def configure(parser) -> None:
    parser.add_argument("what", choices=sorted(BENCHMARKS), help="which benchmark")
    parser.add_argument("--runs", type=int, default=3, help="repetitions (default 3)")


def run(args) -> int:
    module = importlib.import_module(BENCHMARKS[args.what])
    return module.main(args)
