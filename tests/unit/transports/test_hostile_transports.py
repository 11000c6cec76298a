"""A hostile guest against the real transports (issue 16): virtio-mmio register writes and the
lguest device page, with the real device models over in-memory backends and their real
service threads (launcher.io.service.QueueWorkers).

Each example runs a random sequence of hostile actions - register accesses in any order and
width, queue addresses outside RAM, resets mid-traffic, kicks for absent queues, raw
little-endian garbage in the descriptor table and avail ring, garbage in the device page -
mixed with well-formed traffic, then checks:

  * no exception escaped a service thread (QueueWorkers.errors, threading.excepthook) or the
    transport's bus interface (any exception fails the example);
  * no access left guest memory (GuestMemory refuses it; a ready queue's rings lie inside RAM);
  * no write reached past a disk's end (MemoryDisk.write_from asserts; a canary tail beyond
    the disk's size is unchanged and the buffer keeps its length);
  * every refusal is counted and named: each "driver broke a rule" warning is one tick of
    transport metrics.rules_broken under an MmioRule or VirtioRule name, each "guest fault" warning one tick
    of device metrics.guest_faults, and the refusals we provoke on purpose are counted;
  * after a reset the device works again: a Linux-style handshake breaks no rule and a good
    request completes with the right data.

Examples per run scale with the hypothesis profile (tests/conftest.py): a fifth of
max_examples for each transport (dev: 20, CI=true: 200).
"""
from __future__ import annotations

import contextlib
import logging
import struct
import threading
import time

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from harness.fakes.backends import MemoryConsole, MemoryDisk, SeededEntropy, net_pair
from harness.fakes.driver import DriverError, FakeDriver
from harness.fakes.mmio_driver import MmioDriver
from launcher.devices.base import DeviceStatus
from launcher.devices.block import BlockDevice
from launcher.devices.console import ConsoleDevice
from launcher.devices.net import NetDevice
from launcher.devices.rng import RngDevice
from launcher.io.service import QueueWorkers
from launcher.memory import GuestMemory
from launcher.transports.lguest_page import (
    STATUS_OFFSET, DeviceRegion, LguestDevicePage, vring_pages,
)
from launcher.transports.mmio import MMIO_WINDOW, MmioReg, MmioRule, MmioTransport
from launcher.transports.virtio_core import VirtioRule
from launcher.virtqueue import avail_ring_size, desc_table_size, used_ring_size
from tests.strategies import raw_descs

MEM = 1 << 20
SECTOR = 512
DISK_SECTORS = 32
DISK_SIZE = DISK_SECTORS * SECTOR
CANARY = bytes(range(256)) * 16          # 4 KiB past the disk's end that must never change
KINDS = ["block", "console", "net", "rng"]
REGS = [int(r) for r in MmioReg]
A, D, FO, OK = (DeviceStatus.ACKNOWLEDGE, DeviceStatus.DRIVER, DeviceStatus.FEATURES_OK,
                DeviceStatus.DRIVER_OK)
WAIT = 5.0


def _examples() -> int:
    return max(10, settings.default.max_examples // 5)


CAMPAIGN = settings(max_examples=_examples(), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- the harness around one example ---------------------------------------------------------------

class _Counter(logging.Handler):
    """Counts the launcher's refusal warnings by kind."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.rules = self.faults = 0

    def emit(self, record):
        message = record.getMessage()
        if "driver broke a rule" in message:
            self.rules += 1
        elif message.startswith("guest fault:"):
            self.faults += 1


@contextlib.contextmanager
def watched():
    """Thread exceptions that reach threading.excepthook, and the refusal warnings."""
    escaped: list = []
    old_hook = threading.excepthook
    threading.excepthook = lambda args: escaped.append(args.exc_value)
    counter = _Counter()
    logger = logging.getLogger("launcher")
    logger.addHandler(counter)
    try:
        yield escaped, counter
    finally:
        logger.removeHandler(counter)
        threading.excepthook = old_hook


def make_device(kind: str):
    if kind == "block":
        disk = MemoryDisk(data=bytes(DISK_SIZE) + CANARY)
        disk.size = DISK_SIZE            # the device sees DISK_SECTORS; CANARY lies past its end
        return BlockDevice(disk), disk
    if kind == "console":
        console = MemoryConsole()
        return ConsoleDevice(console, on_abort=lambda: None), console
    if kind == "net":
        end, host = net_pair()
        return NetDevice(end, mac=bytes.fromhex("020000000001")), host
    return RngDevice(SeededEntropy(3, chunk=7)), None


def good_chain(kind: str, dev, index: int):
    """(readable, writable) of a well-formed request for queue `index`, or None."""
    if kind == "block":
        return [struct.pack("<IIQ", 0, 0, index % DISK_SECTORS)], [SECTOR, 1]
    if kind == "rng":
        return [], [16]
    if kind == "console":
        return ([b"hostile-ok\n"], []) if index == 1 else ([], [64])
    return ([bytes(dev.hdr_size) + b"\xff" * 6 + bytes(54)], []) if index == 1 else ([], [1526])


def wait_reap(ring: FakeDriver) -> list:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if got := ring.reap():
            return got
        time.sleep(0.001)
    raise TimeoutError("the request did not complete after the reset")


def prove_usable(kind: str, dev, host, rings) -> None:
    """One good request per device, checked end to end."""
    if kind == "block":
        ring = rings[0]
        ring.add([struct.pack("<IIQ", 1, 0, DISK_SECTORS - 1), b"Z" * SECTOR], [1])
        ring.kick()
        assert wait_reap(ring)[0][1:] == (1, b"\0")
        ring.add([struct.pack("<IIQ", 0, 0, DISK_SECTORS - 1)], [SECTOR, 1])
        ring.kick()
        assert wait_reap(ring)[0][1:] == (SECTOR + 1, b"Z" * SECTOR + b"\0")
    elif kind == "rng":
        rings[0].add([], [16])
        rings[0].kick()
        assert wait_reap(rings[0])[0][1] == 16
    elif kind == "console":
        rings[1].add([b"usable again\n"], [])
        rings[1].kick()
        host.wait_output(b"usable again\n")
    else:
        frame = b"\xff" * 6 + b"usable again" + bytes(48)
        rings[1].add([bytes(dev.hdr_size) + frame], [])
        rings[1].kick()
        deadline = time.monotonic() + WAIT
        # The host end gets the vnet header too; frames from earlier hostile traffic come first.
        while not host.take(max(0.01, deadline - time.monotonic())).endswith(frame):
            assert time.monotonic() < deadline


def check_aftermath(kind, dev, host, runner, escaped, counter) -> None:
    assert runner.errors == [], f"a service thread died: {runner.errors!r}"
    assert escaped == [], f"an exception escaped a thread: {escaped!r}"
    assert counter.faults == dev.metrics.guest_faults
    if kind == "block":
        assert len(host.data) == DISK_SIZE + len(CANARY) and host.size == DISK_SIZE
        assert bytes(host.data[DISK_SIZE:]) == CANARY, "a write reached past the disk's end"


# -- virtio-mmio ------------------------------------------------------------------------------

# Addresses a queue register may be pointed at that are not (wholly) guest RAM.
outside_ram = st.one_of(st.integers(MEM - 64, MEM + 0x1000), st.integers(MEM, 2**64 - 1),
                        st.sampled_from([2**64 - 1, 2**64 - 16, 2**63, 2**32, 0xFFFFFFFF]))
u16 = st.integers(0, 0xFFFF)

mmio_ops = st.lists(st.one_of(
    st.tuples(st.just("init"), st.booleans()),
    st.tuples(st.just("good"), st.integers(0, 1), st.booleans()),
    st.tuples(st.just("write"), st.one_of(st.sampled_from(REGS), st.integers(0, MMIO_WINDOW - 1)),
              st.sampled_from([1, 2, 4, 8]),
              st.one_of(st.integers(0, 0xFF), st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 0xF, 0x8B]))),
    st.tuples(st.just("read"), st.one_of(st.sampled_from(REGS), st.integers(0, MMIO_WINDOW - 1)),
              st.sampled_from([1, 2, 4, 8])),
    st.tuples(st.just("outside"), st.integers(0, 3), st.sampled_from(["DESC", "DRIVER", "DEVICE"]), outside_ram),
    st.tuples(st.just("reset")),
    st.tuples(st.just("kick"), st.one_of(st.integers(0, 3), u16, st.integers(0, 2**32 - 1))),
    st.tuples(st.just("desc"), st.integers(0, 1), st.integers(0, 15), raw_descs(16, MEM), st.booleans()),
    st.tuples(st.just("avail"), st.integers(0, 1), st.integers(0, 15), u16, st.booleans()),
    st.tuples(st.just("avail_idx"), st.integers(0, 1), u16, st.booleans()),
    st.tuples(st.just("raw"), st.integers(0, 1), st.integers(0, 0x400), st.binary(min_size=1, max_size=32),
              st.booleans()),
    st.tuples(st.just("inject")),
    st.tuples(st.just("wait")),
), max_size=30)


def _ring_inside_ram(memory, t) -> bool:
    for queue in t.queues:
        if queue.ready:
            for addr, size in ((queue.desc, desc_table_size(queue.num)),
                               (queue.driver, avail_ring_size(queue.num)),
                               (queue.device, used_ring_size(queue.num))):
                if not memory.contains(addr, size):
                    return False
    return True


def run_mmio_op(op, kind, dev, host, t, memory, rings: dict) -> None:
    name = op[0]
    rules = t.metrics.rules_broken
    total = sum(rules.values())
    if name == "init":
        drv = MmioDriver(t, memory, base=0x10000, region=0x20000)
        rings.clear()
        try:
            drv.probe()
            drv.negotiate(None if op[1] else ~(1 << 29))
            for index in range(len(dev.queues)):
                rings[index] = drv.setup_queue(index, 16)
            drv.driver_ok()
        except DriverError:
            pass
    elif name == "good":
        _post_good_chain(rings, kind, dev, op)
    elif name == "write":
        _, offset, size, value = op
        t.write(offset, size, value)
        if size != 4 or offset % 4:
            if offset < 0x100:
                assert rules["CONTROL_REGISTER_WIDTH"] and sum(rules.values()) == total + 1
        if offset == MmioReg.STATUS and size == 4 and value & 0xFF == 0:
            rings.clear()
    elif name == "read":
        value = t.read(op[1], op[2])
        assert 0 <= value < 1 << 32
    elif name == "outside":
        _, index, field, addr = op
        low = getattr(MmioReg, f"QUEUE_{field}_LOW")
        t.write(MmioReg.QUEUE_SEL, 4, index)
        was_ready = t.read(MmioReg.QUEUE_READY, 4)
        t.write(low, 4, addr & 0xFFFFFFFF)
        t.write(low + 4, 4, addr >> 32)
        t.write(MmioReg.QUEUE_READY, 4, 1)
        if not was_ready:
            assert t.read(MmioReg.QUEUE_READY, 4) == 0 or _ring_inside_ram(memory, t)
            assert sum(rules.values()) > total, "a queue outside RAM was refused without a count"
    elif name == "reset":
        t.write(MmioReg.STATUS, 4, 0)
        rings.clear()
        assert dev.status == 0 and not dev.active
    elif name == "kick":
        value = op[1] & 0xFFFFFFFF
        absent = value >= len(t.queues) or not t.queues[value].ready
        before = rules["NOTIFY_QUEUE_NOT_READY"]
        t.write(MmioReg.QUEUE_NOTIFY, 4, value)
        if absent:
            assert rules["NOTIFY_QUEUE_NOT_READY"] == before + 1
    elif name in ("desc", "avail", "avail_idx", "raw"):
        ring = rings.get(op[1])
        if ring is None:
            return
        if name == "desc":
            d = op[3]
            ring.write_desc(op[2] % ring.size, d.addr, d.length, d.flags, d.next)
        elif name == "avail":
            ring.write_avail_entry(op[2] % ring.size, op[3])
        elif name == "avail_idx":
            ring.write_avail_idx(op[2])
        else:
            addr = ring.desc_addr + op[2]
            ring.write_raw(addr, op[3][:max(0, ring.used_addr - addr)] or b"\0")
        if op[-1]:
            t.write(MmioReg.QUEUE_NOTIFY, 4, op[1])
    elif name == "inject":
        _inject_host_input(kind, dev, host, hdr_size=12)       # virtio 1.x net header
    elif name == "wait":
        time.sleep(0.001)
    assert _ring_inside_ram(memory, t)


@pytest.mark.parametrize("kind", KINDS)
@CAMPAIGN
@given(ops=mmio_ops)
def test_hostile_mmio_driver(kind, ops):
    memory = GuestMemory(MEM)
    dev, host = make_device(kind)
    t = MmioTransport(dev, memory, strict=False)
    runner = dev.runner = QueueWorkers(dev)
    try:
        with watched() as (escaped, counter):
            rings: dict = {}
            for op in ops:
                run_mmio_op(op, kind, dev, host, t, memory, rings)
            # Reset mid-traffic, then the device must be as good as new.
            t.write(MmioReg.STATUS, 4, 0)
            assert dev.status == 0 and not dev.active and not runner.threads
            check_aftermath(kind, dev, host, runner, escaped, counter)
            assert counter.rules == sum(t.metrics.rules_broken.values())
            assert set(t.metrics.rules_broken) <= set(MmioRule.__members__) | set(VirtioRule.__members__)
            broken, faults = sum(t.metrics.rules_broken.values()), dev.metrics.guest_faults
            drv = MmioDriver(t, memory, base=0x60000, region=0x20000)
            rings = dict(enumerate(drv.init(len(dev.queues))))
            assert dev.active and dev.status == A | D | FO | OK
            assert sum(t.metrics.rules_broken.values()) == broken, "a clean handshake broke a rule"
            prove_usable(kind, dev, host, rings)
            assert dev.metrics.guest_faults == faults
            check_aftermath(kind, dev, host, runner, escaped, counter)
    finally:
        t.close()
        memory.close()


# -- the lguest device page -------------------------------------------------------------------

LG_RAM = 0x40000
LG_QUEUE = 16

lguest_ops = st.lists(st.one_of(
    st.tuples(st.just("status"), st.one_of(st.sampled_from([0, A, A | D, A | D | OK, 0x80, 0x40, 0xFF]),
                                           st.integers(0, 0xFF))),
    st.tuples(st.just("features"), st.binary(min_size=0, max_size=4)),
    st.tuples(st.just("notify"), st.one_of(st.integers(LG_RAM - 8, LG_RAM + 0x10000),
                                           st.integers(0, 2**64 - 1))),
    st.tuples(st.just("kick"), st.integers(0, 1)),
    st.tuples(st.just("good"), st.integers(0, 1), st.booleans()),
    st.tuples(st.just("page"), st.integers(0, 127), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("desc"), st.integers(0, 1), st.integers(0, LG_QUEUE - 1), raw_descs(LG_QUEUE, LG_RAM),
              st.booleans()),
    st.tuples(st.just("avail"), st.integers(0, 1), st.integers(0, LG_QUEUE - 1), u16, st.booleans()),
    st.tuples(st.just("avail_idx"), st.integers(0, 1), u16, st.booleans()),
    st.tuples(st.just("raw"), st.integers(0, 1), st.integers(0, 0x200), st.binary(min_size=1, max_size=32),
              st.booleans()),
    st.tuples(st.just("inject")),
    st.tuples(st.just("wait")),
), max_size=30)


def _lguest_status(memory, page, entry, status: int) -> None:
    memory.write_u8(entry.desc_addr + STATUS_OFFSET, status)
    assert page.notify(entry.desc_addr)


def _lguest_rings(memory, page, entry) -> dict:
    rings = {}
    for index, q in enumerate(entry.queues):
        rings[index] = FakeDriver.legacy(memory, q.num, q.addr, 4096, arena=(0x8000 + index * 0x8000, 0x8000),
                                         kick=lambda _d, a=q.addr: page.notify(a))
    return rings


def run_lguest_op(op, kind, dev, host, page, entry, memory, rings: dict) -> None:
    name = op[0]
    if name == "status":
        _lguest_status(memory, page, entry, op[1])
        assert memory.read_u8(entry.desc_addr + STATUS_OFFSET) == dev.status & 0xFF
        if op[1] == 0:
            assert dev.status == 0 and not dev.active
            rings.clear()
            rings.update(_lguest_rings(memory, page, entry))
    elif name == "features":
        data = op[1][:entry.feature_len]
        memory.write(entry.accepted_addr, data)
    elif name == "notify":
        ours = {entry.desc_addr, *(q.addr for q in entry.queues)}
        if op[1] not in ours:
            assert not page.notify(op[1])
    elif name == "kick":
        if op[1] < len(entry.queues):
            assert page.notify(entry.queues[op[1]].addr)
    elif name == "good":
        _post_good_chain(rings, kind, dev, op)
    elif name == "page":
        # The guest may scribble over the whole page, our lengths and pfns included.
        memory.write(page.page_addr + op[1], op[2])
    elif name in ("desc", "avail", "avail_idx", "raw"):
        ring = rings.get(op[1])
        if ring is None:
            return
        if name == "desc":
            d = op[3]
            ring.write_desc(op[2], d.addr, d.length, d.flags, d.next)
        elif name == "avail":
            ring.write_avail_entry(op[2], op[3])
        elif name == "avail_idx":
            ring.write_avail_idx(op[2])
        else:
            ring.write_raw(ring.desc_addr + op[2], op[3])
        if op[-1]:
            page.notify(entry.queues[op[1]].addr)
    elif name == "inject":
        _inject_host_input(kind, dev, host, hdr_size=10)       # legacy net header (lguest)
    elif name == "wait":
        time.sleep(0.001)


@pytest.mark.parametrize("kind", KINDS)
@CAMPAIGN
@given(ops=lguest_ops)
def test_hostile_lguest_guest(kind, ops):
    pages = 1 + 2 * vring_pages(LG_QUEUE)
    memory = GuestMemory(LG_RAM + pages * 4096)
    page = LguestDevicePage(memory, DeviceRegion(LG_RAM, memory.size), lambda irq: None)
    dev, host = make_device(kind)
    entry = page.add(dev, queue_size=LG_QUEUE)
    runner = dev.runner = QueueWorkers(dev)
    try:
        with watched() as (escaped, counter):
            rings = _lguest_rings(memory, page, entry)
            for op in ops:
                run_lguest_op(op, kind, dev, host, page, entry, memory, rings)
            _lguest_status(memory, page, entry, 0)
            assert dev.status == 0 and not dev.active and not runner.threads
            check_aftermath(kind, dev, host, runner, escaped, counter)
            faults = dev.metrics.guest_faults
            # The lguest driver's handshake: features in the page, then ACKNOWLEDGE, DRIVER, DRIVER_OK.
            rings = _lguest_rings(memory, page, entry)
            memory.fill(entry.accepted_addr, entry.feature_len)
            for status in (A, A | D, A | D | OK):
                _lguest_status(memory, page, entry, status)
                assert memory.read_u8(entry.desc_addr + STATUS_OFFSET) == status
            assert dev.active
            prove_usable(kind, dev, host, rings)
            assert dev.metrics.guest_faults == faults
            check_aftermath(kind, dev, host, runner, escaped, counter)
    finally:
        dev.close()
        memory.close()


def _post_good_chain(rings, kind, dev, op) -> None:
    """A well-formed request on queue op[1], kicked (op[2]) or only published."""
    ring = rings.get(op[1])
    if ring is not None and ring.num_free >= 3:
        readable, writable = good_chain(kind, dev, op[1])
        with contextlib.suppress(DriverError):
            ring.add(readable, writable)
            ring.kick() if op[2] else ring.publish()


def _inject_host_input(kind, dev, host, *, hdr_size: int) -> None:
    """Traffic from the host side: a broadcast frame for net, typed bytes for the console."""
    if kind == "net":
        host.inject(bytes(hdr_size) + b"\xff" * 6 + bytes(54))
    elif kind == "console":
        dev.backend.feed(b"typed\n")
