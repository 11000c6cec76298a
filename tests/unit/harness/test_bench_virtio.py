"""The pieces of `bench blk` / `bench net` that need no guest: dd parsing, /proc CPU split."""
import os
import threading
import time

from harness import bench
from harness.bench.runner import Cpu, dd_figures, launcher_cpu, mbps


def test_registered():
    assert bench.BENCHMARKS["blk"] == "harness.bench.blk"
    assert bench.BENCHMARKS["net"] == "harness.bench.net"


def test_dd_summary_lines():
    gnu = "16+0 records in\n16+0 records out\n16777216 bytes (17 MB, 16 MiB) copied, 0.0123 s, 1.4 GB/s\n"
    assert dd_figures(gnu) == (16777216, 0.0123)
    busybox = "16777216 bytes (16.0MB) copied, 1.500000 seconds, 10.7MB/s"
    assert dd_figures(busybox) == (16777216, 1.5)
    assert mbps(2_000_000, 2.0) == 1.0


def test_launcher_cpu_splits_main_thread_from_the_others():
    before = launcher_cpu(os.getpid())

    def spin():
        end = time.process_time() + 0.3
        while time.process_time() < end:
            pass
    worker = threading.Thread(target=spin)
    worker.start()
    worker.join()
    delta = launcher_cpu(os.getpid()) - before
    assert isinstance(delta, Cpu)
    assert delta.devices >= 0.1         # the worker's CPU, though it has ended
    assert delta.total == delta.vcpu + delta.devices
