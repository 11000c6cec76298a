"""Fake virtio-mmio driver: the register accesses Linux's drivers/virtio/virtio_mmio.c makes.

    drv = MmioDriver(transport, memory)
    drv.probe()                         # vm_probe: magic, version, device id, vendor id
    drv.negotiate()                     # reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK (+ re-read)
    ring = drv.setup_queue(0)           # vm_setup_vq: QueueSel, QueueReady==0, QueueNumMax, addresses, ready
    drv.driver_ok()
    ring.add([...], [...]); ring.kick() # publishes and, if the device wants it, writes QueueNotify
    drv.interrupt()                     # vm_interrupt: read InterruptStatus, write it to InterruptACK

Rings are harness.fakes.driver.FakeDriver objects over the same guest memory, each in its
own region (rings, then a data arena) allocated from `base` upwards.  `bus` is anything with
read(offset, size) and write(offset, size, value): an MmioTransport, or a bus window.
"""
from __future__ import annotations

from harness.fakes.driver import DriverError, FakeDriver, TransportDriver
from launcher.devices.base import VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, DeviceStatus
from launcher.transports.mmio import CONFIG_SPACE, MAGIC_VALUE, VERSION, MmioReg

QUEUE_REGION = 0x40000      # rings + data arena per queue


class MmioDriver(TransportDriver):
    def __init__(self, bus, memory, *, base: int = 0x10000, region: int = QUEUE_REGION):
        self.bus, self.memory = bus, memory
        self.next_region, self.region = base, region
        self.features = 0
        self.rings: dict[int, FakeDriver] = {}
        self.device_id = 0

    # -- raw accesses ---------------------------------------------------------------------------
    def read(self, reg: int, size: int = 4) -> int:
        return self.bus.read(int(reg), size)

    def write(self, reg: int, value: int, size: int = 4) -> None:
        self.bus.write(int(reg), size, value)

    def status(self) -> int:
        return self.read(MmioReg.STATUS) & 0xFF

    def add_status(self, bits: int) -> None:
        """virtio_add_status: read, or in, write."""
        self.write(MmioReg.STATUS, self.status() | int(bits))

    # -- vm_probe / virtio_dev_probe --------------------------------------------------------------
    def probe(self) -> int:
        if self.read(MmioReg.MAGIC_VALUE) != MAGIC_VALUE:
            raise DriverError("wrong magic value")
        if self.read(MmioReg.VERSION) != VERSION:
            raise DriverError("not a version 2 device")
        self.device_id = self.read(MmioReg.DEVICE_ID)
        if self.device_id == 0:
            raise DriverError("device id 0: no device here")
        self.read(MmioReg.VENDOR_ID)
        return self.device_id

    def device_features(self) -> int:
        self.write(MmioReg.DEVICE_FEATURES_SEL, 1)
        high = self.read(MmioReg.DEVICE_FEATURES)
        self.write(MmioReg.DEVICE_FEATURES_SEL, 0)
        return high << 32 | self.read(MmioReg.DEVICE_FEATURES)

    def write_driver_features(self, features: int) -> None:
        self.write(MmioReg.DRIVER_FEATURES_SEL, 1)
        self.write(MmioReg.DRIVER_FEATURES, features >> 32 & 0xFFFFFFFF)
        self.write(MmioReg.DRIVER_FEATURES_SEL, 0)
        self.write(MmioReg.DRIVER_FEATURES, features & 0xFFFFFFFF)

    def negotiate(self, wanted: int | None = None) -> int:
        """Reset through FEATURES_OK; accepts offered & wanted (default: all offered).
        Returns the accepted features; raises DriverError when FEATURES_OK does not stick."""
        self.write(MmioReg.STATUS, 0)
        self.add_status(DeviceStatus.ACKNOWLEDGE)
        self.add_status(DeviceStatus.DRIVER)
        offered = self.device_features()
        self.features = offered if wanted is None else offered & wanted
        self.write_driver_features(self.features)
        self.add_status(DeviceStatus.FEATURES_OK)
        if not self.status() & DeviceStatus.FEATURES_OK:
            raise DriverError("device refused FEATURES_OK")
        return self.features

    # -- vm_setup_vq ------------------------------------------------------------------------------
    def setup_queue(self, index: int, size: int | None = None) -> FakeDriver:
        self.write(MmioReg.QUEUE_SEL, index)
        if self.read(MmioReg.QUEUE_READY):
            raise DriverError(f"queue {index} is already set up")
        num_max = self.read(MmioReg.QUEUE_NUM_MAX)
        if num_max == 0:
            raise DriverError(f"queue {index} does not exist")
        size = size or num_max
        base, self.next_region = self.next_region, self.next_region + self.region
        ring = FakeDriver.modern(self.memory, size, base, arena=(base + 0x8000, self.region - 0x8000),
                                 event_idx=bool(self.features >> VIRTIO_RING_F_EVENT_IDX & 1),
                                 kick=lambda _drv, i=index: self.notify(i))
        self.write(MmioReg.QUEUE_NUM, size)
        for reg, addr in ((MmioReg.QUEUE_DESC_LOW, ring.desc_addr), (MmioReg.QUEUE_DRIVER_LOW, ring.avail_addr),
                          (MmioReg.QUEUE_DEVICE_LOW, ring.used_addr)):
            self.write(reg, addr & 0xFFFFFFFF)
            self.write(reg + 4, addr >> 32)
        self.write(MmioReg.QUEUE_READY, 1)
        self.rings[index] = ring
        return ring

    def del_queue(self, index: int) -> None:
        """vm_del_vq: QueueReady=0, read back."""
        self.write(MmioReg.QUEUE_SEL, index)
        self.write(MmioReg.QUEUE_READY, 0)
        if self.read(MmioReg.QUEUE_READY):
            raise DriverError(f"queue {index} still ready after QueueReady=0")
        self.rings.pop(index, None)

    # -- running ----------------------------------------------------------------------------------
    def notify(self, index: int) -> None:
        """vm_notify."""
        self.write(MmioReg.QUEUE_NOTIFY, index)

    def interrupt(self) -> int:
        """vm_interrupt: read InterruptStatus and acknowledge exactly that; returns it."""
        status = self.read(MmioReg.INTERRUPT_STATUS)
        self.write(MmioReg.INTERRUPT_ACK, status)
        return status

    def read_config(self, offset: int, size: int) -> int:
        """vm_get: 8-byte fields as two 32-bit reads."""
        if size == 8:
            low = self.bus.read(CONFIG_SPACE + offset, 4)
            return self.bus.read(CONFIG_SPACE + offset + 4, 4) << 32 | low
        return self.bus.read(CONFIG_SPACE + offset, size)

    def reset(self) -> None:
        self.write(MmioReg.STATUS, 0)
        self.rings.clear()

    @property
    def has_version_1(self) -> bool:
        return bool(self.features >> VIRTIO_F_VERSION_1 & 1)
