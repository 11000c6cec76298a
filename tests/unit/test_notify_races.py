"""Lost notifications: the device's half of the kick / interrupt handshakes (virtio 1.2, 2.7.7.2
and 2.7.10) when its stores can still be in flight.

Both handshakes are a store followed by a load on each side:

    device: store avail_event (pop)             driver: store avail->idx, mb,
            load avail->idx (empty? sleep)              load avail_event (kick?)
    device: store used->idx (push)              driver: store used_event, mb,
            load used_event (interrupt?)                load used->idx (empty? sleep)

x86 keeps every order except store->load: the device's load may complete while its store
still sits in the store buffer.  StoreBuffer makes that one reordering deterministic: the
device's stores to the used ring (used->idx, used elements, avail_event, used flags) land in
a private copy the driver cannot see until the device fences (vq.fence) or the test drains it
(the service thread went to sleep in poll()).  The driver's stores are visible at once, as
Linux's virtio_mb() makes them.  Each test checks the same property: when the driver decides
to sleep, the device has either seen its work or is about to be told of it.
"""
import threading

import pytest
from hypothesis import given, strategies as st

from harness.fakes.backends import MemoryConsole, MemoryDisk, SeededEntropy
from harness.fakes.backends_bench import DeviceBench
from launcher.devices.base import VIRTIO_RING_F_EVENT_IDX
from launcher.devices.block import BlkOuthdr, BlkType, BlockDevice
from launcher.devices.console import TRANSMITQ, ConsoleDevice
from launcher.devices.rng import RngDevice
from launcher.virtqueue import used_ring_size


class StoreBuffer:
    """The device CPU's store buffer over one queue's used ring (see the module docstring)."""

    def __init__(self, vq, memory):
        self.memory, self.addr, self.size = memory, vq.used_addr, used_ring_size(vq.size)
        self.pending = bytearray(memory.read(self.addr, self.size))
        vq._used16.release()
        vq._used.release()
        vq._used = memoryview(self.pending)     # the device's stores go here ...
        vq._used16 = vq._used.cast("H")
        vq.fence = self.fence                   # ... and reach guest memory at a fence
        self.fences = 0

    def fence(self) -> None:
        self.fences += 1
        self.drain()

    def drain(self) -> None:
        self.memory.write(self.addr, bytes(self.pending))


# -- devices under test: (device, queue index, post one request) ------------------------------------

def _rng():
    return RngDevice(SeededEntropy()), 0, lambda drv: drv.add([], [16])


def _block():
    header = BlkOuthdr(int(BlkType.VIRTIO_BLK_T_IN), 0, 0).pack()
    return BlockDevice(MemoryDisk()), 0, lambda drv: drv.add([header], [512, 1])


def _console_tx():
    return ConsoleDevice(MemoryConsole()), TRANSMITQ, lambda drv: drv.add([b"x"], [])


DEVICES = {"rng": _rng, "block": _block, "console-tx": _console_tx}


class Rig:
    """A device on the bench, threadless, with the store buffer over the queue under test."""

    def __init__(self, kind: str, event_idx: bool):
        device, self.queue, self._post = DEVICES[kind]()
        if event_idx:
            device.offered |= 1 << VIRTIO_RING_F_EVENT_IDX     # as virtio-mmio offers it
        self.bench = DeviceBench(device)
        self.bench.negotiate()
        self.device = device
        self.drv = self.bench.driver(self.queue)
        self.drv.event_idx = event_idx
        self.vq = device.queues[self.queue].vq
        assert self.vq.event_idx == event_idx
        self.stores = StoreBuffer(self.vq, self.bench.memory)

    def post(self) -> int:
        return self._post(self.drv)

    def close(self) -> None:
        self.bench.close()


@pytest.fixture
def rig_factory():
    rigs = []

    def make(kind, event_idx):
        rig = Rig(kind, event_idx)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.close()


# -- the two races, one deterministic schedule each ---------------------------------------------------

@pytest.mark.parametrize("event_idx", [True, False], ids=["event_idx", "flags"])
@pytest.mark.parametrize("kind", list(DEVICES))
def test_used_buffer_notification_survives_the_drivers_re_enable(rig_factory, kind, event_idx):
    """The driver reaps with interrupts off, then re-enables them and looks once more
    (virtqueue_enable_cb).  The device pushed a used buffer and decided about the interrupt
    in between.  Either the device saw the re-enable (interrupt) or the driver saw the buffer."""
    rig = rig_factory(kind, event_idx)
    rig.drv.disable_interrupts()
    rig.post()
    assert rig.drv.kick()
    due = rig.device.process(rig.queue)     # pop, serve, push (buffered), decide
    sleeps = rig.drv.enable_interrupts()    # store used_event / clear NO_INTERRUPT; mb; load used->idx
    rig.stores.drain()                      # the service thread sleeps in poll()
    assert due or not sleeps, (
        f"lost used-buffer notification: used->idx is {rig.drv.used_idx} but the driver read "
        f"{rig.drv.last_used_idx} and sleeps, and the device decided against an interrupt")


@pytest.mark.parametrize("event_idx", [True, False], ids=["event_idx", "flags"])
@pytest.mark.parametrize("kind", list(DEVICES))
def test_kick_survives_the_devices_last_look(rig_factory, kind, event_idx):
    """The device served the ring dry and is about to sleep; the driver then publishes one
    more buffer and decides whether to kick from what it reads of avail_event.  Either the
    device's last look saw the buffer or the driver kicks.  (A backend that makes a syscall
    or takes a lock while serving fences by accident; the device must not rely on that.)"""
    rig = rig_factory(kind, event_idx)
    rig.post()
    assert rig.drv.kick()
    rig.device.process(rig.queue)           # pop (avail_event buffered), serve, push, ring empty
    rig.post()
    kicked = rig.drv.kick()                 # store avail->idx; mb; load avail_event
    read = rig.drv.avail_event
    rig.stores.drain()
    seen = rig.vq.last_avail_idx == rig.drv.avail_idx
    assert kicked or seen, (
        f"lost kick: avail->idx is {rig.drv.avail_idx}, the device stopped at {rig.vq.last_avail_idx}, "
        f"and the driver read avail_event {read} (the device had written {rig.drv.avail_event})")


# -- the same, over any mix of spontaneous drains ------------------------------------------------------

@given(kind=st.sampled_from(list(DEVICES)), event_idx=st.booleans(), requests=st.integers(1, 4),
       drains=st.lists(st.booleans(), min_size=4, max_size=4), interrupts_off=st.booleans())
def test_no_lost_notification_whatever_drains_early(kind, event_idx, requests, drains, interrupts_off):
    """A store buffer may drain at any moment; only a fence says when it must have.  The
    driver posts `requests` chains, the device serves them with its stores draining after the
    pushes `drains` picks, then the driver both re-enables interrupts and posts once more."""
    rig = Rig(kind, event_idx)
    try:
        push = rig.vq.push
        pushes = []

        def push_then_maybe_drain(head, written):
            push(head, written)
            if drains[len(pushes) % len(drains)]:
                rig.stores.drain()
            pushes.append(head)

        rig.vq.push = push_then_maybe_drain
        if interrupts_off:
            rig.drv.disable_interrupts()
        for _ in range(requests):
            rig.post()
        rig.drv.kick()
        due = rig.device.process(rig.queue)
        assert len(pushes) == requests
        sleeps = rig.drv.enable_interrupts()
        rig.drv.reap()
        rig.post()
        kicked = rig.drv.kick()
        rig.stores.drain()
        assert due or not sleeps, "lost used-buffer notification"
        assert kicked or rig.vq.last_avail_idx == rig.drv.avail_idx, "lost kick"
    finally:
        rig.close()


# -- the real service threads: every request completes on interrupts alone --------------------------

@pytest.mark.parametrize("event_idx", [True, False], ids=["event_idx", "flags"])
def test_service_thread_and_a_sleeping_driver_never_stall(event_idx):
    """A driver thread that sleeps until the interrupt, as virtio-rng's does, against the
    queue's QueueWorkers thread: disable interrupts, reap, re-enable and look again, then
    sleep.  Every request must come back; a lost kick or interrupt shows as a timeout."""
    device = RngDevice(SeededEntropy())
    if event_idx:
        device.offered |= 1 << VIRTIO_RING_F_EVENT_IDX
    with DeviceBench(device, threads=True) as bench:
        bench.negotiate()
        drv = bench.driver(0)
        drv.event_idx = event_idx
        interrupt = threading.Event()

        class Trigger:
            def trigger(self, queue_index):
                interrupt.set()

        bench.workers.trigger = Trigger()
        done = 0
        for round_ in range(150):
            for _ in range(1 + round_ % 3):
                drv.add([], [8])
            drv.kick()
            want = done + 1 + round_ % 3
            while True:
                drv.disable_interrupts()
                done += len(drv.reap())
                if done >= want:
                    break
                if not drv.enable_interrupts():
                    continue                    # a buffer came back meanwhile: reap it
                assert interrupt.wait(5), (f"stalled after {done} of {want} requests: "
                                           f"{bench.device.queues[0].vq!r}")
                interrupt.clear()
        assert done == sum(1 + r % 3 for r in range(150))
