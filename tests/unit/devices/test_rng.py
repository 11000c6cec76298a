"""virtio-rng (5.4): guest buffers filled from /dev/urandom or a seeded fake."""
import os

import pytest

from harness.fakes.backends import SeededEntropy
from harness.fakes.backends_bench import DeviceBench
from launcher.devices.base import WrongDirectionBuffers
from launcher.devices.rng import RngDevice
from launcher.io.entropy import UrandomBackend
from launcher.io.fdutil import readv_full


def rng_bench(backend, strict=True, threads=False):
    bench = DeviceBench(RngDevice(backend, strict=strict), threads=threads)
    bench.negotiate()
    return bench


def test_seeded_fill_is_deterministic_and_loops_over_short_reads():
    backend = SeededEntropy(seed=5, chunk=7)       # at most 7 bytes per "read"
    with rng_bench(backend) as bench:
        drv = bench.driver(0)
        drv.add([], [10, 30])
        drv.add([], [3])
        drv.kick()
        bench.process(0)
        stream = SeededEntropy.stream(5, 43)
        assert drv.reap() == [(0, 40, stream[:40]), (2, 3, stream[40:])]
        assert backend.reads == 6 + 1


def test_urandom_fills_whole_buffers():
    with rng_bench(UrandomBackend()) as bench:
        drv = bench.driver(0)
        drv.add([], [4096, 4096])
        drv.kick()
        bench.process(0)
        [(_, n, data)] = drv.reap()
        assert n == 8192
        assert data.count(0) < 200                  # 8 KiB of zeros would be ~8192


def test_readv_full_loops_over_short_reads():
    r, w = os.pipe()
    os.write(w, b"abc")
    os.write(w, b"defgh")
    bufs = [memoryview(bytearray(4)), memoryview(bytearray(4))]
    assert readv_full(r, bufs) == 8
    assert bytes(bufs[0]) + bytes(bufs[1]) == b"abcdefgh"
    os.close(r)
    os.close(w)


def test_readable_buffers_refused():
    with rng_bench(SeededEntropy(), strict=False) as bench:
        drv = bench.driver(0)
        drv.add([b"give me entropy"], [16])
        drv.kick()
        bench.process(0)
        assert drv.reap()[0][1] == 0
        assert bench.device.metrics.guest_faults == 1
    with rng_bench(SeededEntropy(), strict=True) as bench:
        bench.driver(0).add([b"x"], [])
        bench.driver(0).kick()
        with pytest.raises(WrongDirectionBuffers):
            bench.process(0)


def test_threaded_rng():
    with rng_bench(UrandomBackend(), threads=True) as bench:
        drv = bench.driver(0)
        for _ in range(10):
            drv.add([], [64])
        drv.kick()
        got = bench.wait_used(0, 10)
        assert all(n == 64 for _, n, _ in got)
        assert len({data for _, _, data in got}) == 10
    assert bench.workers.errors == []
