"""Smoke test for `lguest-harness bench vring`: it runs and prints its figures (no timing asserts)."""
import argparse
import re

from harness import bench
from harness.bench.vring import SHAPES


def test_bench_vring_prints_rates_for_every_shape(capsys):
    args = argparse.Namespace(what="vring", runs=1, iterations=300)
    assert bench.run(args) == 0
    out = capsys.readouterr().out
    assert "chains/s" in out and "MB/s" in out and "cpu s" in out and "wall s" in out
    number = r"[\d,]+(\.\d+)?"
    for shape in SHAPES:
        for mode in ("zero-copy", "copy"):
            row = rf"^{re.escape(shape.name)}\s+{mode}\s+{number}\s+{number}\s+\d+\.\d+\s+\d+\.\d+$"
            assert re.search(row, out, re.M), f"no figures for {shape.name} {mode} in:\n{out}"


def test_bench_vring_is_registered():
    parser = argparse.ArgumentParser()
    bench.configure(parser)
    assert parser.parse_args(["vring", "--runs", "1"]).what == "vring"
