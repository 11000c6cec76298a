"""The lguest device page: byte layout, allocation above RAM, status and kicks through it."""
import struct

import pytest

from harness.fakes.backends import MemoryConsole, MemoryDisk, SeededEntropy, net_pair
from harness.fakes.driver import FakeDriver
from launcher.devices.base import DeviceStatus
from launcher.devices.block import BlockDevice
from launcher.devices.console import ConsoleDevice
from launcher.devices.net import NetDevice
from launcher.devices.rng import RngDevice
from launcher.memory import GuestMemory
from launcher.transports.lguest_page import (
    DEVICE_PAGES, DeviceRegion, LguestDevicePage, NotEnoughDeviceMemory, TooManyDevices,
)

RAM = 1 << 20
PAGE = 4096
A, D, OK, F = (DeviceStatus.ACKNOWLEDGE, DeviceStatus.DRIVER, DeviceStatus.DRIVER_OK,
               DeviceStatus.FAILED)

# The structs, as lguest_device.h defines them, packed.
DESC = "<BBBBB"         # struct lguest_device_desc { u8 type, num_vq, feature_len, config_len, status; }
VQCONFIG = "<HHI"       # struct lguest_vqconfig { u16 num; u16 irq; u32 pfn; }


@pytest.fixture
def memory():
    mem = GuestMemory(RAM + DEVICE_PAGES * PAGE)
    yield mem
    mem.close()


@pytest.fixture
def irqs():
    return []


@pytest.fixture
def page(memory, irqs):
    return LguestDevicePage(memory, DeviceRegion(RAM, memory.size), irqs.append)


def four_devices(strict=True):
    mac = bytes.fromhex("020000000001")
    return [ConsoleDevice(MemoryConsole(), strict=strict),
            BlockDevice(MemoryDisk(40 * 512), strict=strict),
            NetDevice(net_pair()[0], mac=mac, strict=strict),
            RngDevice(SeededEntropy(), strict=strict)]


def test_console_block_net_rng_layout(page):
    for dev in four_devices():
        page.add(dev)
    # Each vring of 256 entries takes 3 pages, from the page after the device page.
    pfn = [RAM // PAGE + 1 + 3 * k for k in range(6)]
    expected = b"".join([
        # console: 2 queues, no features, no config
        struct.pack(DESC, 3, 2, 0, 0, 0),
        struct.pack(VQCONFIG, 256, 1, pfn[0]), struct.pack(VQCONFIG, 256, 2, pfn[1]),
        # block: 1 queue; features SEG_MAX (2) and FLUSH (9); capacity, size_max, seg_max
        struct.pack(DESC, 2, 1, 2, 16, 0),
        struct.pack(VQCONFIG, 256, 3, pfn[2]),
        bytes([1 << 2, 1 << (9 - 8)]), bytes(2),
        struct.pack("<QII", 40, 0, 254),
        # net: 2 queues; CSUM 0, GUEST_CSUM 1, MAC 5, GUEST_TSO4 7, GUEST_TSO6 8, GUEST_ECN 9,
        # HOST_TSO4 11, HOST_TSO6 12, HOST_ECN 13, NOTIFY_ON_EMPTY 24, INDIRECT_DESC 28
        struct.pack(DESC, 1, 2, 4, 8, 0),
        struct.pack(VQCONFIG, 256, 4, pfn[3]), struct.pack(VQCONFIG, 256, 5, pfn[4]),
        bytes([0b10100011, 0b00111011, 0, 0b00010001]), bytes(4),
        bytes.fromhex("020000000001") + b"\0\0",
        # rng: 1 queue
        struct.pack(DESC, 4, 1, 0, 0, 0),
        struct.pack(VQCONFIG, 256, 6, pfn[5]),
    ])
    assert len(expected) == 21 + 33 + 37 + 13
    assert page.page_bytes() == expected.ljust(PAGE, b"\0")
    assert page.page_addr == RAM


def test_queues_placed_at_pfn_in_legacy_layout(page):
    con = ConsoleDevice(MemoryConsole())
    entry = page.add(con)
    for index, q in enumerate(entry.queues):
        slot = con.queues[index]
        assert slot.desc_addr == q.pfn * PAGE
        assert slot.avail_addr == slot.desc_addr + 16 * 256
        assert slot.used_addr == slot.desc_addr + 2 * PAGE     # 4096-aligned after avail


def test_too_many_devices(memory):
    # Enough pages for the vrings, so the page itself is what runs out.
    big = GuestMemory(RAM + 1024 * 4 * PAGE)
    page = LguestDevicePage(big, DeviceRegion(RAM, big.size))
    added = 0
    with pytest.raises(TooManyDevices, match="too many devices"):
        while True:
            page.add(RngDevice(SeededEntropy()), queue_size=4)
            added += 1
    assert added == PAGE // 13                    # 13 bytes per rng entry
    before = page.page_bytes()
    with pytest.raises(TooManyDevices):
        page.add(RngDevice(SeededEntropy()), queue_size=4)
    assert page.page_bytes() == before
    big.close()


def test_not_enough_memory_for_vrings(memory):
    page = LguestDevicePage(memory, DeviceRegion(RAM, RAM + 4 * PAGE))
    page.add(RngDevice(SeededEntropy()))          # page + 3 vring pages: exactly full
    with pytest.raises(NotEnoughDeviceMemory, match="not enough memory for devices"):
        page.add(RngDevice(SeededEntropy()))


def write_status(memory, entry, status):
    memory.write_u8(entry.desc_addr + 4, status)


def test_status_writes_go_through_the_status_table(memory, page):
    dev = RngDevice(SeededEntropy(), strict=False)
    entry = page.add(dev)
    assert dev.legacy
    for status in (A, A | D, A | D | OK):
        write_status(memory, entry, status)
        assert page.notify(entry.desc_addr)
        assert dev.status == status
    assert dev.active
    # A refused write: the page shows what the device really has.
    write_status(memory, entry, A)
    page.notify(entry.desc_addr)
    assert dev.status == A | D | OK
    assert memory.read_u8(entry.desc_addr + 4) == A | D | OK
    assert dev.metrics.status_refused == 1
    dev.close()


def test_accepted_features_read_from_page_at_status_write(memory, page):
    dev = NetDevice(net_pair()[0], strict=True)
    entry = page.add(dev)
    write_status(memory, entry, A)
    page.notify(entry.desc_addr)
    write_status(memory, entry, A | D)
    page.notify(entry.desc_addr)
    memory.write(entry.accepted_addr, bytes([0b11, 0, 0, 0]))   # CSUM, GUEST_CSUM
    write_status(memory, entry, A | D | OK)
    page.notify(entry.desc_addr)
    assert dev.accepted == 0b11
    assert dev.backend.offloads.csum
    # Reset: accepted features and the rings go back to zero.
    memory.write(entry.queues[0].addr, b"\xff" * 16)
    write_status(memory, entry, 0)
    page.notify(entry.desc_addr)
    assert dev.accepted == 0 and dev.status == 0 and not dev.active
    assert memory.read(entry.accepted_addr, 4) == bytes(4)
    assert memory.read(entry.queues[0].addr, 16) == bytes(16)
    assert dev.queues[0].desc_addr == entry.queues[0].addr
    dev.close()


def test_kick_serves_queue_and_raises_its_irq(memory, page, irqs):
    page.add(ConsoleDevice(MemoryConsole()))        # irqs 1, 2
    dev = RngDevice(SeededEntropy(7), strict=True)
    entry = page.add(dev)
    q = entry.queues[0]
    drv = FakeDriver.legacy(memory, q.num, q.addr, 4096, arena=(0x10000, 0x10000))
    for status in (A, A | D, A | D | OK):
        write_status(memory, entry, status)
        page.notify(entry.desc_addr)
    drv.add([], [24])
    drv.publish()
    assert page.notify(q.addr)
    assert drv.reap()[0][1:] == (24, SeededEntropy.stream(7, 24))
    assert irqs == [3]
    dev.close()


def test_kick_before_driver_ok_starts_the_device(memory, page):
    dev = RngDevice(SeededEntropy(), strict=True)
    entry = page.add(dev)
    q = entry.queues[0]
    drv = FakeDriver.legacy(memory, q.num, q.addr, 4096, arena=(0x10000, 0x10000))
    drv.add([], [8])
    drv.publish()
    page.notify(q.addr)
    assert dev.active
    assert len(drv.reap()) == 1
    dev.close()


def test_notify_elsewhere_is_not_ours(page):
    page.add(RngDevice(SeededEntropy()))
    assert not page.notify(0x1000)


def test_four_devices_live_on_the_page_with_service_threads(memory, page, irqs):
    """A guest's view: handshake through the page, then traffic on every device, with the
    real service threads and interrupts numbered as the page says."""
    import time
    from launcher.io.service import QueueWorkers
    console, block, net, rng = four_devices()
    for dev in (console, block, net, rng):
        page.add(dev)
        dev.runner = QueueWorkers(dev)
    entries = page.entries
    drivers = {}
    arena = 0x10000
    for entry in entries:
        for index, q in enumerate(entry.queues):
            drivers[entry.device.name, index] = FakeDriver.legacy(
                memory, q.num, q.addr, 4096, arena=(arena, 0x8000),
                kick=lambda d, e=entry, i=index: page.notify(e.queues[i].addr))
            arena += 0x8000
        for status in (A, A | D, A | D | OK):
            write_status(memory, entry, status)
            page.notify(entry.desc_addr)
    console_host, disk, net_host = console.backend, block.backend, net.backend.peer

    def wait_reap(drv):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if got := drv.reap():
                return got
            time.sleep(0.002)
        raise TimeoutError

    drivers["console", 1].add([b"hello from the guest\n"], [])
    drivers["console", 1].kick()
    console_host.wait_output(b"hello from the guest\n")
    drivers["block", 0].add([struct.pack("<IIQ", 1, 0, 39), b"B" * 512], [1])
    drivers["block", 0].kick()
    assert wait_reap(drivers["block", 0])[0][1:] == (1, b"\0")
    assert disk.data[39 * 512:] == b"B" * 512
    drivers["net", 0].add([], [1526])
    drivers["net", 0].kick()
    net_host.inject(bytes(10) + b"\xff" * 6 + bytes(54))
    assert wait_reap(drivers["net", 0])[0][1] == 70
    drivers["rng", 0].add([], [16])
    drivers["rng", 0].kick()
    assert wait_reap(drivers["rng", 0])[0][1] == 16
    assert {2, 3, 4, 6} <= set(irqs) and set(irqs) <= {1, 2, 3, 4, 5, 6}
    for dev in (console, block, net, rng):
        dev.close()
        assert dev.runner.threads == [] and dev.runner.errors == []
