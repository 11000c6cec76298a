"""`lguest-harness bench vring`: chains per second through the split virtqueue engine.

The fake driver builds each chain once and reposts it (reap(keep=True) + repost), so
only the device side is timed: pop, an optional copy of the data, push, and the
interrupt decision once per batch.  Figures are the best of --runs; wall time and our
process CPU time are printed side by side (a gap means we were not on the CPU).

"zero-copy" rows leave the data in guest memory (what a device handing views to a
backend pays); "copy" rows gather readable buffers into bytes and scatter a reply
into the writable ones.  MB/s counts buffer bytes the chains describe (1 MB = 10^6 B).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from harness.fakes.driver import FakeDriver
from launcher.memory import GuestMemory

QUEUE_SIZE = 256
DEFAULT_CHAINS = 100_000
MEM_SIZE = 16 << 20   # a full queue of the biggest shape: 256 x 32 KiB


@dataclass(frozen=True)
class Shape:
    name: str
    readable: tuple[int, ...]
    writable: tuple[int, ...]
    indirect: bool = False

    @property
    def descriptors(self) -> int:
        return 1 if self.indirect else len(self.readable) + len(self.writable)

    @property
    def nbytes(self) -> int:
        return sum(self.readable) + sum(self.writable)


SHAPES = (
    Shape("1x64B", (64,), ()),                                  # small net tx packet
    Shape("blk 16+4096+1", (16,), (4096, 1)),                   # virtio-blk read: hdr, data, status
    Shape("indirect 8x4KiB", (4096,) * 8, (), indirect=True),   # big write behind one descriptor
)


@dataclass
class Result:
    chains: int
    wall: float
    cpu: float


def _fill_queue(drv: FakeDriver, shape: Shape, limit: int) -> list[int]:
    heads = []
    while drv.num_free >= shape.descriptors and len(heads) < min(QUEUE_SIZE, limit):
        heads.append(drv.add(list(shape.readable), list(shape.writable), indirect=shape.indirect))
    return heads


def run_shape(shape: Shape, chains: int, copy: bool) -> Result:
    """Push at least `chains` chains of `shape` through the engine, a full queue per round;
    time only the device side."""
    mem = GuestMemory(MEM_SIZE)
    drv = FakeDriver.modern(mem, QUEUE_SIZE)
    vq = drv.device_queue()
    heads = _fill_queue(drv, shape, chains)
    reply = bytes(shape.nbytes)
    pop, push = vq.pop, vq.push
    done, wall, cpu = 0, 0.0, 0.0
    while done < chains:
        drv.publish()
        w0, c0 = time.perf_counter(), time.process_time()
        if copy:
            while (chain := pop()) is not None:
                chain.read_all()
                push(chain.head, chain.write_into(reply))
        else:
            while (chain := pop()) is not None:
                push(chain.head, chain.writable_len)
        vq.needs_interrupt()
        wall += time.perf_counter() - w0
        cpu += time.process_time() - c0
        done += len(heads)
        for head, _, _ in drv.reap(keep=True):
            drv.repost(head)
    vq.close()
    return Result(done, wall, cpu)


def main(args) -> int:
    chains = getattr(args, "iterations", None) or DEFAULT_CHAINS
    runs = max(1, getattr(args, "runs", 3) or 1)
    print(f"vring: split virtqueue engine, queue size {QUEUE_SIZE}, {chains} chains per run, "
          f"best of {runs} runs (device side only)")
    print(f"{'shape':<18} {'mode':<10} {'chains/s':>12} {'MB/s':>10} {'wall s':>9} {'cpu s':>9}")
    for shape in SHAPES:
        for copy in (False, True):
            best = min((run_shape(shape, chains, copy) for _ in range(runs)),
                       key=lambda r: r.wall)
            rate = best.chains / best.wall if best.wall else float("inf")
            mbps = rate * shape.nbytes / 1e6
            mode = "copy" if copy else "zero-copy"
            print(f"{shape.name:<18} {mode:<10} {rate:>12,.0f} {mbps:>10,.1f} "
                  f"{best.wall:>9.3f} {best.cpu:>9.3f}")
    return 0
