"""virtio-pci, modern (virtio 1.x, section 4.1): one PCI function per device model.

The function's configuration space carries the virtio vendor capabilities (4.1.4), all
pointing into one 64-bit memory BAR (BAR0, BAR_SIZE bytes):

    0x0000 common configuration  (VIRTIO_PCI_CAP_COMMON_CFG, 4.1.4.3)
    0x1000 ISR status            (VIRTIO_PCI_CAP_ISR_CFG, 4.1.4.5): read clears
    0x2000 device configuration  (VIRTIO_PCI_CAP_DEVICE_CFG, 4.1.4.6), when the device has one
    0x3000 notifications         (VIRTIO_PCI_CAP_NOTIFY_CFG, 4.1.4.4): queue n at 0x3000 + 4n

plus VIRTIO_PCI_CAP_PCI_CFG (4.1.4.9), a window onto the BAR through configuration space.
The meaning of the fields (features, status handshake, queues, interrupt status, device
configuration) is VirtioTransportCore's, shared with virtio-mmio; this module decodes the
PCI layout.  Interrupts are INTx, pin A: the transport sets ISR, then calls `interrupt`
(on KVM an irqfd edge on the function's line); the ISR read that clears it is the
acknowledgement, and anything raised after it signals afresh.  No MSI-X capability: Linux's
virtio_pci then uses INTx.

The BAR decodes only while COMMAND.MEMORY_SPACE is set: `on_remap(old, new)` (addresses,
None for "not decoding") tells the hypervisor to move its MMIO range and ioeventfds, as when
Linux sizes the BAR (decode off, all ones, restore) or places it elsewhere.
"""
from __future__ import annotations

import enum
import struct
from typing import Callable

from launcher.devices.base import DeviceId
from launcher.transports.pci_config import (
    CAP_ID_VENDOR, Command, ConfigSpace, PciFunction, PciReg, PciRule, PciRuleBroken, STATUS_INTERRUPT,
)
from launcher.transports.virtio_core import QUEUE_ADDRESSES, VirtioTransportCore

VENDOR_ID = 0x1AF4              # the virtio vendor (4.1.2)
DEVICE_ID_BASE = 0x1040         # modern device ids: 0x1040 + virtio device id (4.1.2)
SUBSYSTEM_ID = 0x1100
REVISION = 1                    # non-transitional devices have revision 1 or higher (4.1.2.1)
BAR_INDEX = 0
BAR_SIZE = 0x4000
COMMON_OFFSET, ISR_OFFSET, DEVICE_OFFSET, NOTIFY_OFFSET = 0x0000, 0x1000, 0x2000, 0x3000
REGION_SIZE = 0x1000
NOTIFY_OFF_MULTIPLIER = 4
NO_VECTOR = 0xFFFF              # VIRTIO_MSI_NO_VECTOR: no MSI-X here
INTERRUPT_PIN_A = 1
CLASS_CODES = {DeviceId.NET: 0x020000, DeviceId.BLOCK: 0x010000, DeviceId.CONSOLE: 0x078000,
               DeviceId.ENTROPY: 0x00FF00}


class CfgType(enum.IntEnum):
    """virtio_pci_cap.cfg_type (4.1.4)."""
    COMMON = 1
    NOTIFY = 2
    ISR = 3
    DEVICE = 4
    PCI = 5


class CommonCfg(enum.IntEnum):
    """struct virtio_pci_common_cfg (4.1.4.3): offsets in the common region."""
    DEVICE_FEATURE_SELECT = 0x00
    DEVICE_FEATURE = 0x04
    DRIVER_FEATURE_SELECT = 0x08
    DRIVER_FEATURE = 0x0C
    CONFIG_MSIX_VECTOR = 0x10
    NUM_QUEUES = 0x12
    DEVICE_STATUS = 0x14
    CONFIG_GENERATION = 0x15
    QUEUE_SELECT = 0x16
    QUEUE_SIZE = 0x18
    QUEUE_MSIX_VECTOR = 0x1A
    QUEUE_ENABLE = 0x1C
    QUEUE_NOTIFY_OFF = 0x1E
    QUEUE_DESC = 0x20
    QUEUE_DRIVER = 0x28
    QUEUE_DEVICE = 0x30


COMMON_CFG_SIZE = 0x38
WIDTH = {CommonCfg.DEVICE_STATUS: 1, CommonCfg.CONFIG_GENERATION: 1, CommonCfg.CONFIG_MSIX_VECTOR: 2,
         CommonCfg.NUM_QUEUES: 2, CommonCfg.QUEUE_SELECT: 2, CommonCfg.QUEUE_SIZE: 2,
         CommonCfg.QUEUE_MSIX_VECTOR: 2, CommonCfg.QUEUE_ENABLE: 2, CommonCfg.QUEUE_NOTIFY_OFF: 2,
         CommonCfg.QUEUE_DESC: 8, CommonCfg.QUEUE_DRIVER: 8, CommonCfg.QUEUE_DEVICE: 8}
READ_ONLY = frozenset({CommonCfg.DEVICE_FEATURE, CommonCfg.NUM_QUEUES, CommonCfg.CONFIG_GENERATION,
                       CommonCfg.QUEUE_NOTIFY_OFF})
QUEUE_ADDRESS_FIELDS = dict(zip((CommonCfg.QUEUE_DESC, CommonCfg.QUEUE_DRIVER, CommonCfg.QUEUE_DEVICE),
                                QUEUE_ADDRESSES))

# virtio_pci_cap (4.1.4): cap_vndr, cap_next (written by add_capability), then these.
_CAP = struct.Struct("<BBBBxxII")          # cap_len, cfg_type, bar, id, padding[2], offset, length
CAP_LEN = 2 + _CAP.size
NOTIFY_CAP_LEN = CAP_LEN + 4               # + notify_off_multiplier
PCI_CFG_CAP_LEN = CAP_LEN + 4              # + pci_cfg_data[4]
FIRST_CAP = 0x40


def _field(offset: int) -> tuple[CommonCfg, int] | None:
    """The common-cfg field holding offset, and offset's distance into it."""
    for field in reversed(CommonCfg):
        if field <= offset < field + WIDTH.get(field, 4):
            return field, offset - field
    return None


class VirtioPciTransport(VirtioTransportCore, PciFunction):
    """One device as a virtio-pci function: configuration space + its BAR."""

    kind = "virtio-pci"
    rule_broken = PciRuleBroken

    def __init__(self, device, memory, *, bar_address: int, irq: int, strict: bool = False,
                 interrupt: Callable[[], None] = lambda: None, notify: Callable[[int], None] | None = None,
                 on_remap: Callable[[int | None, int | None], None] = lambda old, new: None,
                 event_idx: bool = True, name: str | None = None):
        super().__init__(device, memory, interrupt=interrupt, notify=notify, strict=strict,
                         event_idx=event_idx, name=name)
        self.irq = irq
        self.on_remap = on_remap
        self.mapped: int | None = None
        self._cfg_window = FIRST_CAP      # the PCI_CFG capability's offset, set by _capabilities
        self.config = ConfigSpace(on_write=self._config_written)
        self.config.header(vendor=VENDOR_ID, device=DEVICE_ID_BASE + int(device.device_id), revision=REVISION,
                           class_code=CLASS_CODES.get(device.device_id, 0xFF0000), subsystem_vendor=VENDOR_ID,
                           subsystem=SUBSYSTEM_ID, interrupt_pin=INTERRUPT_PIN_A)
        self.config.put(PciReg.INTERRUPT_LINE, 1, irq, writable=0xFF)
        self.config.bar64(BAR_INDEX, bar_address, BAR_SIZE)
        self._capabilities()

    def _reset_registers(self) -> None:
        super()._reset_registers()
        for queue in self.queues:
            queue.num = queue.num_max   # queue_size reads the maximum after a reset (4.1.4.3.1)

    # -- capabilities (4.1.4) -----------------------------------------------------------------------
    def _capabilities(self) -> None:
        regions = [(CfgType.COMMON, COMMON_OFFSET, COMMON_CFG_SIZE), (CfgType.ISR, ISR_OFFSET, 1)]
        if self.device.config:
            regions.append((CfgType.DEVICE, DEVICE_OFFSET, len(self.device.config)))
        offset = FIRST_CAP
        for cfg_type, region, length in regions:
            self.config.add_capability(offset, CAP_ID_VENDOR, _CAP.pack(CAP_LEN, cfg_type, BAR_INDEX, 0, region, length))
            offset += CAP_LEN
        notify_len = max(len(self.queues), 1) * NOTIFY_OFF_MULTIPLIER
        self.config.add_capability(offset, CAP_ID_VENDOR, _CAP.pack(NOTIFY_CAP_LEN, CfgType.NOTIFY, BAR_INDEX, 0,
                                                                    NOTIFY_OFFSET, notify_len)
                                   + struct.pack("<I", NOTIFY_OFF_MULTIPLIER))
        offset += NOTIFY_CAP_LEN
        self.config.add_capability(offset, CAP_ID_VENDOR, _CAP.pack(PCI_CFG_CAP_LEN, CfgType.PCI, 0, 0, 0, 0)
                                   + bytes(4))
        self._cfg_window = offset
        # bar, offset and length of the PCI_CFG window are the driver's to write (4.1.4.9)
        self.config.mask[offset + 4] = 0xFF
        self.config.mask[offset + 8:offset + 16] = b"\xff" * 8

    def notify_address(self, index: int) -> int:
        """Queue index's notification address, relative to the BAR."""
        return NOTIFY_OFFSET + index * NOTIFY_OFF_MULTIPLIER

    # -- configuration space --------------------------------------------------------------------------
    def config_read(self, offset: int, size: int) -> int:
        data = self._cfg_window + CAP_LEN
        if data <= offset < data + 4:
            return self._cfg_window_access(None) if offset == data else 0
        return self.config.read(offset, size)

    def config_write(self, offset: int, size: int, value: int) -> None:
        data = self._cfg_window + CAP_LEN
        if data <= offset < data + 4:
            if offset == data:
                self._cfg_window_access(value)
            return
        self.config.write(offset, size, value)

    def _cfg_window_access(self, value: int | None) -> int:
        """pci_cfg_data: a read (value None) or write of the BAR through the PCI_CFG window."""
        cap = self._cfg_window
        bar, offset, length = self.config.data[cap + 4], self.config.get(cap + 8, 4), self.config.get(cap + 12, 4)
        if bar != BAR_INDEX or length not in (1, 2, 4) or offset % length or offset + length > BAR_SIZE:
            self.broke(PciRule.PCI_CFG_WINDOW_INVALID, f"bar {bar}, offset {offset:#x}, length {length}")
            return 0
        if value is None:
            return self.read(offset, length)
        self.write(offset, length, value & ((1 << (8 * length)) - 1))
        return 0

    def _config_written(self, offset: int, size: int) -> None:
        """COMMAND or the BAR changed: decode at the BAR's address while MEMORY_SPACE is set."""
        bar = PciReg.BAR0 + 4 * BAR_INDEX
        if not (offset < PciReg.COMMAND + 2 and offset + size > PciReg.COMMAND or bar <= offset < bar + 8):
            return
        address = self.config.bar64_address(BAR_INDEX)
        new = address if self.config.command & Command.MEMORY_SPACE else None
        if new is not None and address + BAR_SIZE > 1 << 64:
            new = None
        if new != self.mapped:
            old, self.mapped = self.mapped, new
            self.on_remap(old, new)

    def refuse_mapping(self, address: int, why: str) -> None:
        """The hypervisor could not decode the BAR at address (it overlaps something)."""
        self.mapped = None
        self.broke(PciRule.BAR_OVERLAP, f"BAR{BAR_INDEX} at {address:#x}: {why}")

    # -- the BAR: read(offset, size) / write(offset, size, value) -------------------------------------
    def read(self, offset: int, size: int) -> int:
        self.metrics.register_reads += 1
        region, at = offset & ~(REGION_SIZE - 1), offset & (REGION_SIZE - 1)
        if region == COMMON_OFFSET and at < COMMON_CFG_SIZE:
            return self._read_common(at, size)
        if region == ISR_OFFSET and at == 0:
            bits = self.take_interrupt_status()
            self.config.set_status_bits(STATUS_INTERRUPT, False)
            return bits
        if region == DEVICE_OFFSET and at < len(self.device.config):
            return self.read_config(at, size)
        self.broke(PciRule.UNDEFINED_REGISTER, f"{size}-byte read at BAR offset {offset:#x}")
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        self.metrics.register_writes += 1
        region, at = offset & ~(REGION_SIZE - 1), offset & (REGION_SIZE - 1)
        if region == COMMON_OFFSET and at < COMMON_CFG_SIZE:
            self._write_common(at, size, value)
        elif region == DEVICE_OFFSET and at < len(self.device.config):
            self.write_config(at, size, value)
        elif region == NOTIFY_OFFSET and at < len(self.queues) * NOTIFY_OFF_MULTIPLIER:
            self.notify_queue(value & 0xFFFF, f"notification at BAR offset {offset:#x}")
        else:
            self.broke(PciRule.UNDEFINED_REGISTER, f"{size}-byte write of {value:#x} at BAR offset {offset:#x}")

    # -- common configuration (4.1.4.3) ---------------------------------------------------------------
    def _common_field(self, at: int, size: int, what: str) -> tuple[CommonCfg, bool | None] | None:
        """The field accessed and, for 64-bit fields, which half (None: all of it)."""
        hit = _field(at)
        if hit is not None:
            field, into = hit
            width = WIDTH.get(field, 4)
            if size == width and into == 0:
                return field, None
            if width == 8 and size == 4 and into in (0, 4):
                return field, into == 4
        self.broke(PciRule.CAPABILITY_ACCESS_INVALID, f"{size}-byte {what} at common cfg offset {at:#x}")
        return None

    def _read_common(self, at: int, size: int) -> int:
        hit = self._common_field(at, size, "read")
        if hit is None:
            return 0
        field, high = hit
        queue = self.selected(rule=None)
        if field is CommonCfg.DEVICE_FEATURE_SELECT:
            return self.device_features_sel
        if field is CommonCfg.DEVICE_FEATURE:
            return self.read_device_features()
        if field is CommonCfg.DRIVER_FEATURE_SELECT:
            return self.driver_features_sel
        if field is CommonCfg.DRIVER_FEATURE:
            return self.driver_features >> (32 * self.driver_features_sel) & 0xFFFFFFFF \
                if self.driver_features_sel < 2 else 0
        if field in (CommonCfg.CONFIG_MSIX_VECTOR, CommonCfg.QUEUE_MSIX_VECTOR):
            return NO_VECTOR
        if field is CommonCfg.NUM_QUEUES:
            return len(self.queues)
        if field is CommonCfg.DEVICE_STATUS:
            return self.read_status()
        if field is CommonCfg.CONFIG_GENERATION:
            return self.config_generation & 0xFF
        if field is CommonCfg.QUEUE_SELECT:
            return self.queue_sel
        if queue is None:
            return 0            # queue_size 0: "not available" (4.1.4.3.1)
        if field is CommonCfg.QUEUE_SIZE:
            return queue.num
        if field is CommonCfg.QUEUE_ENABLE:
            return int(queue.ready)
        if field is CommonCfg.QUEUE_NOTIFY_OFF:
            return self.queue_sel
        address = getattr(queue, QUEUE_ADDRESS_FIELDS[field])
        return address if high is None else address >> (32 * high) & 0xFFFFFFFF

    def _write_common(self, at: int, size: int, value: int) -> None:
        hit = self._common_field(at, size, f"write of {value:#x}")
        if hit is None:
            return
        field, high = hit
        what = f"{field.name.lower()} write of {value:#x}"
        if field in READ_ONLY:
            self.broke(PciRule.WRITE_OF_READ_ONLY, what)
        elif field is CommonCfg.DEVICE_FEATURE_SELECT:
            self.device_features_sel = value
        elif field is CommonCfg.DRIVER_FEATURE_SELECT:
            self.driver_features_sel = value
        elif field is CommonCfg.DRIVER_FEATURE:
            self.write_driver_features(value)
        elif field in (CommonCfg.CONFIG_MSIX_VECTOR, CommonCfg.QUEUE_MSIX_VECTOR):
            pass                # reads back NO_VECTOR: the driver learns there is no MSI-X (4.1.5.1.2)
        elif field is CommonCfg.DEVICE_STATUS:
            self.write_status(value)
        elif field is CommonCfg.QUEUE_SELECT:
            self.queue_sel = value
        elif field is CommonCfg.QUEUE_SIZE:
            self.write_queue_num(value, what)
        elif field is CommonCfg.QUEUE_ENABLE:
            self.write_queue_ready(value)
        else:
            self.write_queue_address(QUEUE_ADDRESS_FIELDS[field], value, what, high)

    # -- interrupts: INTx, pin A ------------------------------------------------------------------------
    def _raise(self, bits: int) -> None:
        self.config.set_status_bits(STATUS_INTERRUPT, True)
        if self.config.command & Command.INTX_DISABLE:
            with self._isr_lock:
                self.interrupt_status |= int(bits)     # pending, but the driver masked INTx
            return
        super()._raise(bits)
