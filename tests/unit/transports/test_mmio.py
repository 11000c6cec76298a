"""virtio-mmio (4.2) register file: the Linux driver's sequence works, every access rule is
enforced with a message naming it, interrupts and suppression, reset."""
import struct
import threading

import pytest

from harness.fakes.backends import MemoryConsole, MemoryDisk, SeededEntropy, net_pair
from harness.fakes.mmio_driver import MmioDriver
from launcher.devices.base import (
    VIRTIO_F_NOTIFY_ON_EMPTY, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, DeviceStatus,
)
from launcher.devices.block import BlockDevice
from launcher.devices.console import ConsoleDevice
from launcher.devices.net import NetDevice
from launcher.devices.rng import RngDevice
from launcher.io.service import QueueWorkers
from launcher.memory import GuestMemory
from launcher.transports.mmio import (
    CONFIG_SPACE, MAGIC_VALUE, InterruptStatus, MmioReg, MmioRule, MmioRuleBroken, MmioTransport,
)
from launcher.transports.virtio_core import VirtioRule

RULES = [*MmioRule, *VirtioRule]

MEM = 1 << 20
A, D, FO, OK = (DeviceStatus.ACKNOWLEDGE, DeviceStatus.DRIVER, DeviceStatus.FEATURES_OK,
                DeviceStatus.DRIVER_OK)
V1 = 1 << VIRTIO_F_VERSION_1
EVENT_IDX = 1 << VIRTIO_RING_F_EVENT_IDX


_OPEN: list = []


@pytest.fixture
def memory():
    mem = GuestMemory(MEM)
    yield mem
    while _OPEN:
        _OPEN.pop().close()     # the devices' ring views go before the memory
    mem.close()


class Irq:
    def __init__(self):
        self.count = 0
        self.event = threading.Event()

    def __call__(self):
        self.count += 1
        self.event.set()


def make(memory, device=None, strict=True, **kw):
    device = device or BlockDevice(MemoryDisk(64 * 512, data=bytes(range(256)) * 128), strict=True)
    irq = Irq()
    transport = MmioTransport(device, memory, interrupt=irq, strict=strict, **kw)
    _OPEN.append(transport)
    return transport, MmioDriver(transport, memory), irq


def blk_read(ring, sector, length=512):
    return ring.add([struct.pack("<IIQ", 0, 0, sector)], [length, 1])


# -- identity and the Linux sequence (4.2.3) ----------------------------------------------------

def test_identity_registers(memory):
    t, drv, _ = make(memory)
    assert drv.read(MmioReg.MAGIC_VALUE) == MAGIC_VALUE == 0x74726976
    assert drv.read(MmioReg.VERSION) == 2
    assert drv.read(MmioReg.DEVICE_ID) == 2
    assert drv.read(MmioReg.CONFIG_GENERATION) == 0


@pytest.mark.parametrize("make_device, queues, device_id", [
    (lambda: ConsoleDevice(MemoryConsole(), strict=True), 2, 3),
    (lambda: BlockDevice(MemoryDisk(8 * 512), strict=True), 1, 2),
    (lambda: NetDevice(net_pair()[0], mac=bytes.fromhex("020000000001"), strict=True), 2, 1),
    (lambda: RngDevice(SeededEntropy(), strict=True), 1, 4),
])
def test_linux_handshake_brings_each_device_live(memory, make_device, queues, device_id):
    t, drv, _ = make(memory, make_device())
    drv.init(queues)
    assert drv.device_id == device_id
    assert drv.status() == A | D | FO | OK
    assert t.device.active and all(slot.vq is not None for slot in t.device.queues)
    assert not t.metrics.rules_broken
    t.close()


def test_device_features_are_modern(memory):
    dev = NetDevice(net_pair()[0], strict=True)
    assert dev.offered >> VIRTIO_F_NOTIFY_ON_EMPTY & 1
    t, drv, _ = make(memory, dev)
    drv.probe()
    drv.write(MmioReg.STATUS, A)
    drv.write(MmioReg.STATUS, A | D)
    offered = drv.device_features()
    assert offered & V1 and offered & EVENT_IDX
    assert not offered >> VIRTIO_F_NOTIFY_ON_EMPTY & 1      # legacy-only (6.3)
    drv.write(MmioReg.DEVICE_FEATURES_SEL, 2)
    assert drv.read(MmioReg.DEVICE_FEATURES) == 0


def test_block_read_through_the_transport(memory):
    t, drv, irq = make(memory)
    (ring,) = drv.init(1)
    head = blk_read(ring, 1)
    ring.kick()
    assert t.metrics.notifies == 1
    assert irq.count == 1
    assert drv.read(MmioReg.INTERRUPT_STATUS) == InterruptStatus.USED_BUFFER
    assert drv.interrupt() == 1
    assert drv.read(MmioReg.INTERRUPT_STATUS) == 0
    [(got_head, length, data)] = ring.reap()
    assert (got_head, length) == (head, 513)
    assert data[:512] == (bytes(range(256)) * 2) and data[512] == 0


def test_config_space_reads_capacity_as_two_halves_and_bytes(memory):
    t, drv, _ = make(memory)
    drv.init(1)
    assert drv.read_config(0, 8) == 64
    assert drv.bus.read(CONFIG_SPACE, 1) == 64
    assert drv.bus.read(CONFIG_SPACE + 12, 4) == 254          # seg_max = queue size - 2


def test_64bit_queue_address_halves_compose(memory):
    t, drv, _ = make(memory)
    drv.probe()
    drv.negotiate()
    drv.write(MmioReg.QUEUE_SEL, 0)
    drv.write(MmioReg.QUEUE_NUM, 16)
    drv.write(MmioReg.QUEUE_DESC_LOW, 0x1000)
    drv.write(MmioReg.QUEUE_DESC_HIGH, 0x1)
    assert t.queues[0].desc == 0x1_0000_1000
    drv.write(MmioReg.QUEUE_DESC_HIGH, 0)
    assert t.queues[0].desc == 0x1000


def test_del_queue_reads_back_zero_and_reset_clears_everything(memory):
    t, drv, irq = make(memory)
    drv.probe()
    drv.negotiate()
    drv.setup_queue(0)
    drv.del_queue(0)
    assert t.device.queues[0].size == 0
    ring = drv.setup_queue(0)
    drv.driver_ok()
    blk_read(ring, 0)
    ring.kick()
    assert drv.read(MmioReg.INTERRUPT_STATUS) == 1
    drv.reset()
    assert drv.status() == 0
    assert drv.read(MmioReg.INTERRUPT_STATUS) == 0         # 4.2.2.1: reset clears it
    drv.write(MmioReg.QUEUE_SEL, 0)
    assert drv.read(MmioReg.QUEUE_READY) == 0
    assert not t.device.active and t.device.queues[0].vq is None


def test_queue_num_max_is_zero_for_absent_queue(memory):
    t, drv, _ = make(memory)
    drv.write(MmioReg.QUEUE_SEL, 7)
    assert drv.read(MmioReg.QUEUE_NUM_MAX) == 0
    assert drv.read(MmioReg.QUEUE_READY) == 0
    assert not t.metrics.rules_broken


# -- interrupts ----------------------------------------------------------------------------------

def test_config_change_sets_bit_1_and_a_new_generation(memory):
    t, drv, irq = make(memory)
    t.config_changed()
    assert drv.read(MmioReg.CONFIG_GENERATION) == 1
    assert drv.read(MmioReg.INTERRUPT_STATUS) == InterruptStatus.CONFIG_CHANGE
    assert irq.count == 1


@pytest.mark.parametrize("publish", ["decrement", "jump", "bad head"])
def test_needs_reset_is_announced_with_a_config_change_notification(memory, publish):
    t, drv, irq = make(memory, BlockDevice(MemoryDisk(64 * 512), strict=False), strict=False)
    (ring,) = drv.init(1)
    for sector in range(3):
        blk_read(ring, sector)
    ring.kick()
    ring.reap()
    drv.interrupt()
    before = irq.count
    if publish == "bad head":
        ring.write_avail_entry(3, ring.size)    # one past the descriptor table
        ring.write_avail_idx(4)
    else:
        ring.write_avail_idx(1 if publish == "decrement" else 3 + ring.size + 1)
    drv.write(MmioReg.QUEUE_NOTIFY, 0)
    assert drv.read(MmioReg.STATUS) & DeviceStatus.DEVICE_NEEDS_RESET
    assert drv.read(MmioReg.INTERRUPT_STATUS) & InterruptStatus.CONFIG_CHANGE      # 2.1.2
    assert irq.count > before and drv.read(MmioReg.CONFIG_GENERATION) == 1


def test_ack_leaving_bits_pending_raises_again(memory):
    t, drv, irq = make(memory)
    t.trigger(0)
    t.config_changed()
    assert irq.count == 2
    drv.write(MmioReg.INTERRUPT_ACK, InterruptStatus.USED_BUFFER)   # read before the config change
    assert irq.count == 3 and t.metrics.reraised == 1
    drv.write(MmioReg.INTERRUPT_ACK, InterruptStatus.CONFIG_CHANGE)
    assert irq.count == 3 and drv.read(MmioReg.INTERRUPT_STATUS) == 0


def test_no_interrupt_flag_suppresses_without_event_idx(memory):
    t, drv, irq = make(memory)
    drv.probe()
    drv.negotiate(wanted=~EVENT_IDX)
    ring = drv.setup_queue(0)
    drv.driver_ok()
    ring.set_no_interrupt(True)
    blk_read(ring, 0)
    ring.kick()
    assert irq.count == 0 and len(ring.reap()) == 1


def test_used_event_suppresses_with_event_idx(memory):
    t, drv, irq = make(memory)
    (ring,) = drv.init(1)
    assert drv.features & EVENT_IDX and t.device.queues[0].vq.event_idx
    ring.set_used_event(5)              # "interrupt me once used->idx passes 5"
    for sector in range(3):
        blk_read(ring, sector)
        ring.kick()
    assert irq.count == 0
    for sector in range(4):
        blk_read(ring, sector)
        ring.kick()
    assert irq.count == 1


def test_kicks_and_interrupts_through_service_threads(memory):
    dev = RngDevice(SeededEntropy(), strict=True)
    t, drv, irq = make(memory, dev)
    dev.runner = QueueWorkers(dev)
    (ring,) = drv.init(1)
    ring.add([], [64])
    ring.kick()
    assert irq.event.wait(5)
    assert drv.interrupt() == 1
    [(_, length, _)] = ring.reap()
    assert length == 64
    t.close()
    assert dev.runner.closed and not dev.runner.threads


# -- the rules (4.2.2.2, 3.1.1) ------------------------------------------------------------------

def ready_for_queues(drv):
    drv.probe()
    drv.negotiate()


def live(drv):
    drv.init(1)


def queue_ready(drv):
    ready_for_queues(drv)
    drv.setup_queue(0)


CASES = {
    MmioRule.CONTROL_REGISTER_WIDTH: (None, lambda d: d.read(MmioReg.STATUS, size=2)),
    VirtioRule.CONFIG_ACCESS_WIDTH: (None, lambda d: d.bus.read(CONFIG_SPACE + 2, 4)),
    MmioRule.UNDEFINED_REGISTER: (None, lambda d: d.read(0x018)),
    MmioRule.WRITE_OF_READ_ONLY: (None, lambda d: d.write(MmioReg.MAGIC_VALUE, 1)),
    MmioRule.READ_OF_WRITE_ONLY: (None, lambda d: d.read(MmioReg.QUEUE_NOTIFY)),
    VirtioRule.FEATURES_BEFORE_DRIVER: (lambda d: d.write(MmioReg.STATUS, A),
                                      lambda d: d.read(MmioReg.DEVICE_FEATURES)),
    VirtioRule.FEATURES_AFTER_FEATURES_OK: (ready_for_queues, lambda d: d.write(MmioReg.DRIVER_FEATURES, 0)),
    VirtioRule.VERSION_1_REQUIRED: (None, lambda d: d.negotiate(wanted=~V1)),
    VirtioRule.FEATURES_OK_NOT_REREAD: (
        lambda d: (d.write(MmioReg.STATUS, A), d.write(MmioReg.STATUS, A | D), d.write_driver_features(V1),
                   d.write(MmioReg.STATUS, A | D | FO)),
        lambda d: d.write(MmioReg.STATUS, A | D | FO | OK)),
    VirtioRule.QUEUE_SETUP_OUTSIDE_WINDOW: (None, lambda d: d.write(MmioReg.QUEUE_NUM, 16)),
    VirtioRule.QUEUE_SETUP_WHILE_READY: (queue_ready, lambda d: d.write(MmioReg.QUEUE_DESC_LOW, 0x2000)),
    VirtioRule.QUEUE_NOT_PRESENT: (ready_for_queues,
                                 lambda d: (d.write(MmioReg.QUEUE_SEL, 3), d.write(MmioReg.QUEUE_NUM, 16))),
    VirtioRule.QUEUE_NUM_INVALID: (ready_for_queues, lambda d: d.write(MmioReg.QUEUE_NUM, 3)),
    VirtioRule.QUEUE_LAYOUT_INVALID: (
        ready_for_queues,
        lambda d: (d.write(MmioReg.QUEUE_NUM, 16), d.write(MmioReg.QUEUE_DESC_LOW, MEM - 16),
                   d.write(MmioReg.QUEUE_READY, 1))),
    VirtioRule.NOTIFY_QUEUE_NOT_READY: (live, lambda d: d.notify(1)),
}


def test_every_rule_has_a_case():
    assert set(CASES) == set(RULES)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_strict_mode_raises_naming_the_rule(memory, rule):
    setup, breach = CASES[rule]
    t, drv, _ = make(memory)
    if setup:
        setup(drv)
    with pytest.raises(MmioRuleBroken) as info:
        breach(drv)
    assert info.value.rule is rule
    assert rule.name in str(info.value) and "(" in str(info.value)    # names the spec section


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_lenient_mode_counts_and_carries_on(memory, rule, caplog):
    setup, breach = CASES[rule]
    t, drv, _ = make(memory, strict=False)
    if setup:
        setup(drv)
    try:
        breach(drv)
    except Exception as err:    # only the fake driver's own complaint (refused FEATURES_OK) may escape
        assert rule is VirtioRule.VERSION_1_REQUIRED, err
    assert t.metrics.rules_broken[rule.name] == 1
    assert rule.value in caplog.text


def test_refused_accesses_change_nothing(memory):
    t, drv, _ = make(memory, strict=False)
    queue_ready(drv)
    before = (t.queues[0].desc, t.queues[0].num)
    drv.write(MmioReg.QUEUE_DESC_LOW, 0x2000)
    drv.write(MmioReg.QUEUE_NUM, 8)
    assert (t.queues[0].desc, t.queues[0].num) == before
    assert drv.read(MmioReg.QUEUE_NOTIFY) == 0


def test_version_1_missing_leaves_features_ok_clear(memory):
    t, drv, _ = make(memory, strict=False)
    with pytest.raises(Exception, match="refused FEATURES_OK"):
        drv.negotiate(wanted=~V1)
    assert drv.status() == A | D


def test_features_ok_refused_for_unoffered_bits(memory):
    dev = BlockDevice(MemoryDisk(8 * 512), strict=False)
    t, drv, _ = make(memory, dev, strict=False)
    drv.write(MmioReg.STATUS, A)
    drv.write(MmioReg.STATUS, A | D)
    drv.write_driver_features(V1 | 1 << 40)
    drv.write(MmioReg.STATUS, A | D | FO)
    assert drv.status() == A | D
    assert dev.metrics.guest_faults == 1
