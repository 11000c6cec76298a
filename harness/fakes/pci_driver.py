"""Fake virtio-pci driver: the accesses Linux's virtio_pci_modern makes, through the 0xcf8/0xcfc
ports of a PciHost and the function's BAR.

    drv = PciDriver(host, slot, bar, memory)   # host: ports 0xcf8.. as read/write(offset, ...)
    drv.probe()                 # ids, the capability walk, BAR sizing, memory space + bus master
    drv.init(queues)            # reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK, queues, DRIVER_OK
    ring.add([...], [...]); ring.kick()
    drv.interrupt()             # vp_interrupt: read ISR (which clears it)

`bar` is anything with read(offset, size) / write(offset, size, value) at BAR offsets: the
transport itself, or a view of the hypervisor's MMIO bus at the BAR's address.
"""
from __future__ import annotations

from harness.fakes.driver import DriverError, FakeDriver, TransportDriver
from launcher.devices.base import VIRTIO_RING_F_EVENT_IDX, DeviceStatus
from launcher.transports.pci import BAR_INDEX, DEVICE_ID_BASE, VENDOR_ID, CfgType, CommonCfg
from launcher.transports.pci_config import CAP_ID_VENDOR, Command, PciReg
from launcher.transports.pci_host import DATA_OFFSET, ENABLE

QUEUE_REGION = 0x40000


class PciDriver(TransportDriver):
    def __init__(self, host, slot: int, bar, memory, *, base: int = 0x10000, region: int = QUEUE_REGION):
        self.host, self.slot, self.bar, self.memory = host, slot, bar, memory
        self.next_region, self.region = base, region
        self.features = 0
        self.rings: dict[int, FakeDriver] = {}
        self.caps: dict[int, tuple[int, int]] = {}      # cfg_type -> (BAR offset, length)
        self.notify_multiplier = 0

    # -- configuration space through 0xcf8/0xcfc ----------------------------------------------------
    def cfg_read(self, reg: int, size: int = 4) -> int:
        self.host.write(0, 4, ENABLE | self.slot << 11 | reg & 0xFC)
        return self.host.read(DATA_OFFSET + (reg & 3), size)

    def cfg_write(self, reg: int, value: int, size: int = 4) -> None:
        self.host.write(0, 4, ENABLE | self.slot << 11 | reg & 0xFC)
        self.host.write(DATA_OFFSET + (reg & 3), size, value)

    def bar_size(self) -> int:
        """__pci_read_base: decode off, all ones, read the mask, restore."""
        bar = PciReg.BAR0 + 4 * BAR_INDEX
        command = self.cfg_read(PciReg.COMMAND, 2)
        self.cfg_write(PciReg.COMMAND, command & ~Command.MEMORY_SPACE, 2)
        low, high = self.cfg_read(bar), self.cfg_read(bar + 4)
        self.cfg_write(bar, 0xFFFFFFFF)
        self.cfg_write(bar + 4, 0xFFFFFFFF)
        mask = self.cfg_read(bar + 4) << 32 | (self.cfg_read(bar) & ~0xF)
        self.cfg_write(bar, low)
        self.cfg_write(bar + 4, high)
        self.cfg_write(PciReg.COMMAND, command, 2)
        return (~mask + 1) & 0xFFFFFFFFFFFFFFFF

    def probe(self) -> int:
        """virtio_pci_probe + vp_modern_probe; returns the virtio device id."""
        vendor, device = self.cfg_read(PciReg.VENDOR_ID, 2), self.cfg_read(PciReg.DEVICE_ID, 2)
        if vendor != VENDOR_ID or device < DEVICE_ID_BASE:
            raise DriverError(f"not a modern virtio device: {vendor:04x}:{device:04x}")
        self.size = self.bar_size()
        cap = self.cfg_read(PciReg.CAPABILITIES_POINTER, 1)
        while cap:
            if self.cfg_read(cap, 1) == CAP_ID_VENDOR:
                cfg_type = self.cfg_read(cap + 3, 1)
                self.caps.setdefault(cfg_type, (self.cfg_read(cap + 8), self.cfg_read(cap + 12)))
                if cfg_type == CfgType.NOTIFY:
                    self.notify_multiplier = self.cfg_read(cap + 16)
            cap = self.cfg_read(cap + 1, 1)
        for needed in (CfgType.COMMON, CfgType.ISR, CfgType.NOTIFY):
            if needed not in self.caps:
                raise DriverError(f"no {needed.name} capability")
        command = self.cfg_read(PciReg.COMMAND, 2)
        self.cfg_write(PciReg.COMMAND, command | Command.MEMORY_SPACE | Command.BUS_MASTER, 2)
        return device - DEVICE_ID_BASE

    # -- common configuration ---------------------------------------------------------------------
    def read(self, field: int, size: int = 4) -> int:
        return self.bar.read(self.caps[CfgType.COMMON][0] + int(field), size)

    def write(self, field: int, value: int, size: int = 4) -> None:
        self.bar.write(self.caps[CfgType.COMMON][0] + int(field), size, value)

    def status(self) -> int:
        return self.read(CommonCfg.DEVICE_STATUS, 1)

    def add_status(self, bits: int) -> None:
        self.write(CommonCfg.DEVICE_STATUS, self.status() | int(bits), 1)

    def negotiate(self, wanted: int | None = None) -> int:
        self.write(CommonCfg.DEVICE_STATUS, 0, 1)
        self.add_status(DeviceStatus.ACKNOWLEDGE)
        self.add_status(DeviceStatus.DRIVER)
        self.write(CommonCfg.DEVICE_FEATURE_SELECT, 1)
        offered = self.read(CommonCfg.DEVICE_FEATURE) << 32
        self.write(CommonCfg.DEVICE_FEATURE_SELECT, 0)
        offered |= self.read(CommonCfg.DEVICE_FEATURE)
        self.features = offered if wanted is None else offered & wanted
        for word in (0, 1):
            self.write(CommonCfg.DRIVER_FEATURE_SELECT, word)
            self.write(CommonCfg.DRIVER_FEATURE, self.features >> (32 * word) & 0xFFFFFFFF)
        self.add_status(DeviceStatus.FEATURES_OK)
        if not self.status() & DeviceStatus.FEATURES_OK:
            raise DriverError("device refused FEATURES_OK")
        return self.features

    def setup_queue(self, index: int, size: int | None = None) -> FakeDriver:
        """vp_modern setup_vq: select, size, addresses as 32-bit halves, notify_off, enable."""
        self.write(CommonCfg.QUEUE_SELECT, index, 2)
        num = self.read(CommonCfg.QUEUE_SIZE, 2)
        if not num or self.read(CommonCfg.QUEUE_ENABLE, 2):
            raise DriverError(f"queue {index} is not available")
        size = size or num
        base, self.next_region = self.next_region, self.next_region + self.region
        notify_off = self.read(CommonCfg.QUEUE_NOTIFY_OFF, 2)
        ring = FakeDriver.modern(self.memory, size, base, arena=(base + 0x8000, self.region - 0x8000),
                                 event_idx=bool(self.features >> VIRTIO_RING_F_EVENT_IDX & 1),
                                 kick=lambda _drv, i=index, off=notify_off: self.notify(i, off))
        self.write(CommonCfg.QUEUE_SIZE, size, 2)
        for field, addr in ((CommonCfg.QUEUE_DESC, ring.desc_addr), (CommonCfg.QUEUE_DRIVER, ring.avail_addr),
                            (CommonCfg.QUEUE_DEVICE, ring.used_addr)):
            self.write(field, addr & 0xFFFFFFFF)
            self.write(field + 4, addr >> 32)
        self.write(CommonCfg.QUEUE_ENABLE, 1, 2)
        self.rings[index] = ring
        return ring

    # -- running ----------------------------------------------------------------------------------
    def notify(self, index: int, notify_off: int | None = None) -> None:
        """vp_notify: the queue index, 16 bits, at its notification address."""
        off = index if notify_off is None else notify_off
        self.bar.write(self.caps[CfgType.NOTIFY][0] + off * self.notify_multiplier, 2, index)

    def interrupt(self) -> int:
        """vp_interrupt: reading ISR is the acknowledgement."""
        return self.bar.read(self.caps[CfgType.ISR][0], 1)

    def read_config(self, offset: int, size: int) -> int:
        base = self.caps[CfgType.DEVICE][0]
        if size == 8:
            return self.bar.read(base + offset + 4, 4) << 32 | self.bar.read(base + offset, 4)
        return self.bar.read(base + offset, size)

    def cap_offset(self, cfg_type: int) -> int:
        """Configuration-space offset of the first capability of cfg_type."""
        cap = self.cfg_read(PciReg.CAPABILITIES_POINTER, 1)
        while cap and not (self.cfg_read(cap, 1) == CAP_ID_VENDOR and self.cfg_read(cap + 3, 1) == cfg_type):
            cap = self.cfg_read(cap + 1, 1)
        return cap

