"""virtio-pci (4.1) behind configuration mechanism #1: the Linux driver's sequence through the
0xcf8/0xcfc ports and the BAR, the capability layout, BAR sizing and decoding, INTx with a
read-clears ISR, the PCI_CFG window, and hostile accesses (each rule named, never a traceback)."""
import struct

import pytest

from harness.fakes.backends import MemoryConsole, MemoryDisk, SeededEntropy, net_pair
from harness.fakes.pci_driver import PciDriver
from launcher.devices.base import DeviceStatus
from launcher.devices.block import BlockDevice
from launcher.devices.console import ConsoleDevice
from launcher.devices.net import NetDevice
from launcher.devices.rng import RngDevice
from launcher.memory import GuestMemory
from launcher.transports.pci import (
    BAR_SIZE, COMMON_OFFSET, DEVICE_OFFSET, ISR_OFFSET, NO_VECTOR, NOTIFY_OFF_MULTIPLIER, NOTIFY_OFFSET, CfgType,
    CommonCfg, VirtioPciTransport,
)
from launcher.transports.pci_config import STATUS_INTERRUPT, Command, PciReg, PciRule, PciRuleBroken
from launcher.transports.pci_host import CLASS_HOST_BRIDGE, DATA_OFFSET, ENABLE, IntxRoute, PciHost
from launcher.transports.virtio_core import InterruptStatus, VirtioRule
from tests.unit.transports.test_mmio import Irq

MEM = 1 << 20
BAR = 0xE000_0000
A, D, FO, OK = (DeviceStatus.ACKNOWLEDGE, DeviceStatus.DRIVER, DeviceStatus.FEATURES_OK,
                DeviceStatus.DRIVER_OK)
_OPEN: list = []


@pytest.fixture
def memory():
    mem = GuestMemory(MEM)
    yield mem
    while _OPEN:
        _OPEN.pop().close()
    mem.close()


def make(memory, device=None, strict=True, remaps=None):
    device = device or BlockDevice(MemoryDisk(64 * 512, data=bytes(range(256)) * 128), strict=True)
    irq = Irq()
    host = PciHost(strict=strict)
    t = VirtioPciTransport(device, memory, bar_address=BAR, irq=11, interrupt=irq, strict=strict,
                           on_remap=(lambda old, new: remaps.append((old, new))) if remaps is not None
                           else (lambda old, new: None))
    _OPEN.append(t)
    slot = host.add(t)
    return t, PciDriver(host, slot, t, memory), irq


def blk_read(ring, sector, length=512):
    return ring.add([struct.pack("<IIQ", 0, 0, sector)], [length, 1])


# -- the host bridge and mechanism #1 -------------------------------------------------------------

def test_config_address_reads_back_and_absent_slots_read_all_ones():
    host = PciHost(strict=True)
    host.write(0, 4, 0x8000_0000)
    assert host.read(0, 4) == 0x8000_0000         # Linux's pci_check_type1
    host.write(0, 4, 0x8000_0008)
    assert host.read(DATA_OFFSET + 2, 2) == 0x0600 == CLASS_HOST_BRIDGE >> 8   # pci_sanity_check
    host.write(0, 4, ENABLE | 5 << 11)
    assert host.read(DATA_OFFSET, 4) == 0xFFFFFFFF
    host.write(0, 4, ENABLE | 1 << 16)              # bus 1
    assert host.read(DATA_OFFSET, 2) == 0xFFFF
    host.write(0, 4, 0)                             # not enabled
    assert host.read(DATA_OFFSET, 4) == 0xFFFFFFFF
    host.write(3, 1, 0x01)                          # a byte probe of 0xcfb leaves the address alone
    assert host.read(0, 4) == 0


def test_identity_and_interrupt_registers(memory):
    t, drv, _ = make(memory)
    assert drv.probe() == 2
    assert drv.cfg_read(PciReg.DEVICE_ID, 2) == 0x1042
    assert drv.cfg_read(PciReg.REVISION_ID, 1) == 1
    assert drv.cfg_read(PciReg.SUBSYSTEM_VENDOR_ID, 2) == 0x1AF4
    assert drv.cfg_read(PciReg.INTERRUPT_PIN, 1) == 1
    assert drv.cfg_read(PciReg.INTERRUPT_LINE, 1) == 11
    assert IntxRoute(drv.slot, 1, 11).mp_source_irq == drv.slot << 2


def test_capabilities_describe_the_bar(memory):
    t, drv, _ = make(memory)
    drv.probe()
    assert drv.caps[CfgType.COMMON] == (COMMON_OFFSET, 0x38)
    assert drv.caps[CfgType.ISR] == (ISR_OFFSET, 1)
    assert drv.caps[CfgType.DEVICE] == (DEVICE_OFFSET, len(t.device.config))
    assert drv.caps[CfgType.NOTIFY] == (NOTIFY_OFFSET, NOTIFY_OFF_MULTIPLIER)
    assert drv.notify_multiplier == NOTIFY_OFF_MULTIPLIER
    assert CfgType.PCI in drv.caps
    assert drv.cfg_read(PciReg.STATUS, 2) & 0x10     # capabilities list


def test_rng_has_no_device_cfg_capability(memory):
    t, drv, _ = make(memory, RngDevice(SeededEntropy(), strict=True))
    drv.probe()
    assert CfgType.DEVICE not in drv.caps


@pytest.mark.parametrize("make_device, queues, device_id", [
    (lambda: ConsoleDevice(MemoryConsole(), strict=True), 2, 3),
    (lambda: BlockDevice(MemoryDisk(8 * 512), strict=True), 1, 2),
    (lambda: NetDevice(net_pair()[0], mac=bytes.fromhex("020000000001"), strict=True), 2, 1),
    (lambda: RngDevice(SeededEntropy(), strict=True), 1, 4),
])
def test_linux_handshake_brings_each_device_live(memory, make_device, queues, device_id):
    t, drv, _ = make(memory, make_device())
    drv.init(queues)
    assert drv.status() == A | D | FO | OK
    assert drv.read(CommonCfg.NUM_QUEUES, 2) == len(t.queues)
    assert t.device.active and all(slot.vq is not None for slot in t.device.queues)
    assert not t.metrics.rules_broken


# -- BAR sizing and decoding -------------------------------------------------------------------------

def test_bar_sizing_and_decode_follow_the_command_register(memory):
    remaps = []
    t, drv, _ = make(memory, remaps=remaps)
    assert drv.bar_size() == BAR_SIZE
    assert t.config.bar64_address(0) == BAR and t.mapped is None and remaps == []
    drv.probe()
    assert remaps == [(None, BAR)] and t.mapped == BAR
    drv.bar_size()                                  # decode off while sizing, then back
    assert remaps[1:] == [(BAR, None), (None, BAR)]


def test_a_moved_bar_is_decoded_at_its_new_address(memory):
    remaps = []
    t, drv, _ = make(memory, remaps=remaps)
    drv.probe()
    drv.cfg_write(PciReg.BAR0, 0xF000_0000 | 0x7)   # the low flag bits are read-only
    assert remaps[-1] == (BAR, 0xF000_0000)
    assert drv.cfg_read(PciReg.BAR0) == 0xF000_0004
    drv.cfg_write(PciReg.BAR0 + 4, 0x1)
    assert remaps[-1] == (0xF000_0000, 0x1_F000_0000)


def test_hostile_bar_and_header_writes_change_only_writable_bits(memory):
    t, drv, _ = make(memory)
    for reg in range(0, 0x40, 4):
        drv.cfg_write(reg, 0xFFFFFFFF)
    assert drv.cfg_read(PciReg.VENDOR_ID, 2) == 0x1AF4 and drv.cfg_read(PciReg.DEVICE_ID, 2) == 0x1042
    assert drv.cfg_read(PciReg.BAR0) == (~(BAR_SIZE - 1) & 0xFFFFFFF0) | 0x4
    assert drv.cfg_read(PciReg.COMMAND, 2) == Command.MEMORY_SPACE | Command.BUS_MASTER | Command.INTX_DISABLE
    assert t.mapped == 0xFFFFFFFF_FFFFC000          # decoding where the guest put it (all ones)
    assert drv.cfg_read(PciReg.CAPABILITIES_POINTER, 1) == 0x40


def test_refused_mapping_is_a_named_rule(memory):
    t, drv, _ = make(memory, strict=False)
    t.refuse_mapping(BAR, "overlaps another range")
    assert t.metrics.rules_broken[PciRule.BAR_OVERLAP.name] == 1 and t.mapped is None


# -- queues, notifications, interrupts ------------------------------------------------------------------

def test_block_read_through_notify_and_isr(memory):
    t, drv, irq = make(memory)
    (ring,) = drv.init(1)
    head = blk_read(ring, 1)
    ring.kick()
    assert t.metrics.notifies == 1 and irq.count == 1
    assert drv.cfg_read(PciReg.STATUS, 2) & STATUS_INTERRUPT
    assert drv.interrupt() == InterruptStatus.USED_BUFFER
    assert drv.interrupt() == 0                     # the read cleared it
    assert not drv.cfg_read(PciReg.STATUS, 2) & STATUS_INTERRUPT
    [(got_head, length, data)] = ring.reap()
    assert (got_head, length) == (head, 513) and data[:512] == bytes(range(256)) * 2


def test_intx_disable_holds_the_interrupt_back(memory):
    t, drv, irq = make(memory)
    (ring,) = drv.init(1)
    drv.cfg_write(PciReg.COMMAND, drv.cfg_read(PciReg.COMMAND, 2) | Command.INTX_DISABLE, 2)
    blk_read(ring, 0)
    ring.kick()
    assert irq.count == 0 and drv.interrupt() == InterruptStatus.USED_BUFFER


def test_queue_fields_and_msix_vectors(memory):
    t, drv, _ = make(memory)
    drv.probe()
    drv.negotiate()
    drv.write(CommonCfg.QUEUE_SELECT, 0, 2)
    assert drv.read(CommonCfg.QUEUE_SIZE, 2) == t.queues[0].num_max
    assert drv.read(CommonCfg.QUEUE_NOTIFY_OFF, 2) == 0
    drv.write(CommonCfg.QUEUE_DESC, 0x1_0000_1000, 8)
    assert t.queues[0].desc == 0x1_0000_1000 and drv.read(CommonCfg.QUEUE_DESC + 4) == 1
    drv.write(CommonCfg.QUEUE_MSIX_VECTOR, 0, 2)
    assert drv.read(CommonCfg.QUEUE_MSIX_VECTOR, 2) == NO_VECTOR == drv.read(CommonCfg.CONFIG_MSIX_VECTOR, 2)
    drv.write(CommonCfg.QUEUE_SELECT, 7, 2)
    assert drv.read(CommonCfg.QUEUE_SIZE, 2) == 0   # not available


def test_device_config_and_generation(memory):
    t, drv, _ = make(memory)
    drv.init(1)
    assert drv.read_config(0, 8) == 64
    t.config_changed()
    assert drv.read(CommonCfg.CONFIG_GENERATION, 1) == 1
    assert drv.interrupt() == InterruptStatus.CONFIG_CHANGE


def test_pci_cfg_window_reaches_the_bar(memory):
    t, drv, _ = make(memory)
    drv.probe()
    cap = drv.cap_offset(CfgType.PCI)
    drv.cfg_write(cap + 4, 0, 1)
    drv.cfg_write(cap + 8, COMMON_OFFSET + CommonCfg.NUM_QUEUES)
    drv.cfg_write(cap + 12, 2)
    assert drv.cfg_read(cap + 16) == 1
    drv.cfg_write(cap + 8, COMMON_OFFSET + CommonCfg.DEVICE_STATUS)
    drv.cfg_write(cap + 12, 1)
    drv.cfg_write(cap + 16, A)
    assert drv.status() == A


# -- broken rules: each named, strict raises, lenient counts ---------------------------------------------

def ready_for_queues(drv):
    drv.probe()
    drv.negotiate()


def _window(drv, length, offset=0):
    cap = drv.cap_offset(CfgType.PCI)
    drv.cfg_write(cap + 8, offset)
    drv.cfg_write(cap + 12, length)
    return drv.cfg_read(cap + 16)


CASES = {
    PciRule.CONFIG_ACCESS_INVALID: (None, lambda d: (d.host.write(0, 4, ENABLE), d.host.read(DATA_OFFSET + 1, 4))),
    PciRule.CAPABILITY_ACCESS_INVALID: (ready_for_queues, lambda d: d.read(CommonCfg.QUEUE_SELECT, 4)),
    PciRule.UNDEFINED_REGISTER: (ready_for_queues, lambda d: d.bar.read(0x1800, 4)),
    PciRule.WRITE_OF_READ_ONLY: (ready_for_queues, lambda d: d.write(CommonCfg.NUM_QUEUES, 5, 2)),
    PciRule.PCI_CFG_WINDOW_INVALID: (ready_for_queues, lambda d: _window(d, 3)),
    PciRule.BAR_OVERLAP: (None, lambda d: d.bar.refuse_mapping(BAR, "test")),
    VirtioRule.QUEUE_NOT_PRESENT: (ready_for_queues,
                                   lambda d: (d.write(CommonCfg.QUEUE_SELECT, 9, 2), d.write(CommonCfg.QUEUE_SIZE, 8, 2))),
    VirtioRule.QUEUE_NUM_INVALID: (ready_for_queues, lambda d: d.write(CommonCfg.QUEUE_SIZE, 3, 2)),
    VirtioRule.QUEUE_LAYOUT_INVALID: (ready_for_queues,
                                      lambda d: (d.write(CommonCfg.QUEUE_DESC, MEM - 16),
                                                 d.write(CommonCfg.QUEUE_ENABLE, 1, 2))),
    VirtioRule.NOTIFY_QUEUE_NOT_READY: (ready_for_queues, lambda d: d.notify(0)),
    VirtioRule.FEATURES_BEFORE_DRIVER: (lambda d: d.probe(), lambda d: d.read(CommonCfg.DEVICE_FEATURE)),
    VirtioRule.CONFIG_ACCESS_WIDTH: (ready_for_queues, lambda d: d.bar.read(DEVICE_OFFSET + 2, 4)),
}


def test_every_pci_rule_has_a_case():
    assert set(PciRule) <= set(CASES)


@pytest.mark.parametrize("rule", list(CASES), ids=lambda r: r.name)
def test_strict_mode_raises_naming_the_rule(memory, rule):
    setup, breach = CASES[rule]
    t, drv, _ = make(memory)
    if setup:
        setup(drv)
    with pytest.raises(PciRuleBroken) as info:
        breach(drv)
    assert info.value.rule is rule and rule.name in str(info.value) and "(" in str(info.value)


@pytest.mark.parametrize("rule", list(CASES), ids=lambda r: r.name)
def test_lenient_mode_counts_and_carries_on(memory, rule, caplog):
    setup, breach = CASES[rule]
    t, drv, _ = make(memory, strict=False)
    if setup:
        setup(drv)
    breach(drv)
    counted = drv.host.rules_broken if rule is PciRule.CONFIG_ACCESS_INVALID else t.metrics.rules_broken
    assert counted[rule.name] == 1
    assert rule.value in caplog.text


def test_every_config_access_and_bar_access_is_answered(memory):
    """Any width at any port offset and any BAR offset: a value or a named rule, nothing else."""
    t, drv, _ = make(memory, strict=False)
    drv.init(1)
    for reg in range(0, 0x100, 4):
        drv.host.write(0, 4, ENABLE | drv.slot << 11 | reg)
        for offset in range(DATA_OFFSET, DATA_OFFSET + 4):
            for size in (1, 2, 4, 8):
                assert 0 <= drv.host.read(offset, size) < 1 << 64
    for offset in range(0, BAR_SIZE, 0x3F):
        for size in (1, 2, 4, 8):
            assert 0 <= t.read(offset, size) < 1 << 64
            t.write(offset, size, 0)
