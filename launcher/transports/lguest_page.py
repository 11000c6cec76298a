"""The lguest bus: one page of device descriptors just above guest RAM (lguest's
include/linux/lguest_device.h and the Launcher's new_dev_desc / add_virtqueue /
add_feature / set_config / update_device_status / reset_device).

The page holds, for each device in command-line order, packed with no padding:

    struct lguest_device_desc { u8 type, num_vq, feature_len, config_len, status; }
    struct lguest_vqconfig    { u16 num; u16 irq; u32 pfn; }   x num_vq
    u8 offered features[feature_len]     (bit b is byte b/8, bit b%8)
    u8 accepted features[feature_len]    (written by the guest)
    u8 config[config_len]

Each queue's vring sits in its own pages above RAM at pfn * 4096 in the legacy layout with
LGUEST_VRING_ALIGN 4096; interrupts are numbered from 1 in the order queues are added.
The guest writes the status byte in the page and then notifies (LHCALL_NOTIFY) the
descriptor's address; notify() sends that write through the device's status table and
writes back the status the device really has.  lguest names stay in this file.
"""
from __future__ import annotations

import dataclasses
import logging
import struct
from typing import Callable

from launcher.errors import TransportError
from launcher.memory import GuestMemory
from launcher.virtqueue import legacy_size

log = logging.getLogger(__name__)

LGUEST_PAGE_SIZE = 4096
LGUEST_VRING_ALIGN = 4096
DEVICE_PAGES = 256          # the original's room above RAM for the page and the vrings
VIRTQUEUE_NUM = 256

LGUEST_DEVICE_DESC = struct.Struct("<BBBBB")   # type, num_vq, feature_len, config_len, status
LGUEST_VQCONFIG = struct.Struct("<HHI")        # num, irq, pfn
STATUS_OFFSET = 4


class TooManyDevices(TransportError):
    def __init__(self, name: str, need: int, used: int):
        super().__init__(f"too many devices: {name} needs {need:#x} bytes of the lguest device page, "
                         f"{LGUEST_PAGE_SIZE - used:#x} of {LGUEST_PAGE_SIZE:#x} are left")


class NotEnoughDeviceMemory(TransportError):
    def __init__(self, pages: int, next_addr: int, limit: int):
        super().__init__(f"not enough memory for devices: {pages} pages at {next_addr:#x} pass the "
                         f"end of guest memory {limit:#x}")


class DescriptorFieldOverflow(TransportError):
    def __init__(self, name: str, field: str, value: int):
        super().__init__(f"{name}: {field} {value} does not fit the lguest_device_desc's u8")


class DeviceRegion:
    """Page allocator for the device page and vrings, from the top of RAM upwards (get_pages)."""

    def __init__(self, ram_size: int, limit: int):
        if ram_size % LGUEST_PAGE_SIZE or limit < ram_size:
            raise TransportError(f"device region {ram_size:#x}..{limit:#x} is not page-aligned above RAM")
        self.start = self.next = ram_size
        self.limit = limit

    def alloc_pages(self, pages: int) -> int:
        addr = self.next
        if addr + pages * LGUEST_PAGE_SIZE > self.limit:
            raise NotEnoughDeviceMemory(pages, addr, self.limit)
        self.next += pages * LGUEST_PAGE_SIZE
        return addr


def vring_pages(num: int) -> int:
    return -(-legacy_size(num, LGUEST_VRING_ALIGN) // LGUEST_PAGE_SIZE)


def feature_len(offered: int) -> int:
    """Bytes needed for the highest offered bit (add_feature grows feature_len to bit/8 + 1)."""
    return (offered.bit_length() + 7) // 8


@dataclasses.dataclass
class LguestQueue:
    num: int
    irq: int
    pfn: int

    @property
    def addr(self) -> int:
        return self.pfn * LGUEST_PAGE_SIZE


@dataclasses.dataclass
class LguestEntry:
    """One device on the page; lengths are ours, never re-read from the guest-writable page."""
    device: object
    desc_addr: int
    queues: list[LguestQueue]
    feature_len: int
    config_len: int

    @property
    def features_addr(self) -> int:
        return self.desc_addr + LGUEST_DEVICE_DESC.size + LGUEST_VQCONFIG.size * len(self.queues)

    @property
    def accepted_addr(self) -> int:
        return self.features_addr + self.feature_len

    @property
    def config_addr(self) -> int:
        return self.accepted_addr + self.feature_len

    @property
    def end(self) -> int:
        return self.config_addr + self.config_len


class _QueueIrqs:
    """The Trigger a device on this bus gets: queue index -> its lguest interrupt.

    The 2.6.39 lguest bus has no configuration-change interrupt: a change the device makes
    itself (DEVICE_NEEDS_RESET) is published in the page's status byte, where the guest
    reads its status, and the device's first queue interrupt makes the guest look."""

    def __init__(self, raise_irq: Callable[[int], None], irqs: list[int], publish_status: Callable[[], None]):
        self.raise_irq, self.irqs, self.publish_status = raise_irq, irqs, publish_status

    def trigger(self, queue_index: int) -> None:
        self.raise_irq(self.irqs[queue_index])

    def config_changed(self) -> None:
        self.publish_status()
        if self.irqs:
            self.raise_irq(self.irqs[0])


class LguestDevicePage:
    """The device page at the bottom of `region`; raise_irq(irq) interrupts the guest."""

    def __init__(self, memory: GuestMemory, region: DeviceRegion,
                 raise_irq: Callable[[int], None] = lambda irq: None, *, first_irq: int = 1):
        self.memory = memory
        self.region = region
        self.raise_irq = raise_irq
        self.page_addr = region.alloc_pages(1)
        memory.fill(self.page_addr, LGUEST_PAGE_SIZE)
        self.next_irq = first_irq
        self.entries: list[LguestEntry] = []
        self._used = 0

    # -- building the page --------------------------------------------------------------------
    def add(self, device, queue_size: int = VIRTQUEUE_NUM) -> LguestEntry:
        """Describe `device` on the page and give each of its queues vring pages and an irq."""
        name = getattr(device, "name", type(device).__name__)
        flen, clen, nvq = feature_len(device.offered), len(device.config), len(device.queues)
        for field, value in (("feature_len", flen), ("config_len", clen), ("num_vq", nvq)):
            if value > 0xFF:
                raise DescriptorFieldOverflow(name, field, value)
        need = LGUEST_DEVICE_DESC.size + LGUEST_VQCONFIG.size * nvq + 2 * flen + clen
        if self._used + need > LGUEST_PAGE_SIZE:
            raise TooManyDevices(name, need, self._used)
        queues = [self._add_queue(device, index, queue_size) for index in range(nvq)]
        entry = LguestEntry(device, self.page_addr + self._used, queues, flen, clen)
        self._write_entry(entry)
        self._used += need
        device.legacy = True          # lguest guests never write FEATURES_OK (7.1)
        device.memory = self.memory
        device.trigger = _QueueIrqs(self.raise_irq, [q.irq for q in queues],
                                    lambda: self.memory.write_u8(entry.desc_addr + STATUS_OFFSET, device.status & 0xFF))
        self.entries.append(entry)
        return entry

    def _add_queue(self, device, index: int, num: int) -> LguestQueue:
        addr = self.region.alloc_pages(vring_pages(num))
        self.memory.fill(addr, vring_pages(num) * LGUEST_PAGE_SIZE)
        queue = LguestQueue(num, self.next_irq, addr // LGUEST_PAGE_SIZE)
        self.next_irq += 1
        device.set_queue_legacy(index, num, addr, LGUEST_VRING_ALIGN)
        return queue

    def _write_entry(self, entry: LguestEntry) -> None:
        dev = entry.device
        self.memory.pack(LGUEST_DEVICE_DESC, entry.desc_addr, int(dev.device_id), len(entry.queues),
                         entry.feature_len, entry.config_len, 0)
        at = entry.desc_addr + LGUEST_DEVICE_DESC.size
        for q in entry.queues:
            self.memory.pack(LGUEST_VQCONFIG, at, q.num, q.irq, q.pfn)
            at += LGUEST_VQCONFIG.size
        self.memory.write(entry.features_addr, dev.offered.to_bytes(entry.feature_len, "little"))
        self.memory.fill(entry.accepted_addr, entry.feature_len)
        self.memory.write(entry.config_addr, bytes(dev.config))

    def page_bytes(self) -> bytes:
        return self.memory.read(self.page_addr, LGUEST_PAGE_SIZE)

    def refresh_config(self, entry: LguestEntry) -> None:
        """Copy the device's config bytes to the page after the device changed them."""
        self.memory.write(entry.config_addr, bytes(entry.device.config[:entry.config_len]))

    # -- the guest's notifications ------------------------------------------------------------
    def notify(self, addr: int) -> bool:
        """LHCALL_NOTIFY(addr): a status update or a queue kick.  False: not one of ours
        (the original then treated addr as an early-console string)."""
        for entry in self.entries:
            if addr == entry.desc_addr:
                self.update_status(entry)
                return True
            for index, queue in enumerate(entry.queues):
                if addr == queue.addr:
                    self.kick(entry, index)
                    return True
        return False

    def update_status(self, entry: LguestEntry) -> None:
        """The guest wrote the status byte: run it through the device's status table."""
        dev = entry.device
        status = self.memory.read_u8(entry.desc_addr + STATUS_OFFSET)
        if status:
            # A legacy guest writes its accepted features into the page before DRIVER_OK.
            accepted = int.from_bytes(self.memory.read(entry.accepted_addr, entry.feature_len), "little")
            if accepted != dev.accepted:
                dev.accept_features(accepted)
        dev.set_status(status)
        if status == 0:
            self._reset_rings(entry)
        self.memory.write_u8(entry.desc_addr + STATUS_OFFSET, dev.status & 0xFF)

    def _reset_rings(self, entry: LguestEntry) -> None:
        """reset_device: the accepted features and the vrings go back to zero, and the
        queues back to where the page says they are."""
        self.memory.fill(entry.accepted_addr, entry.feature_len)
        for index, q in enumerate(entry.queues):
            self.memory.fill(q.addr, vring_pages(q.num) * LGUEST_PAGE_SIZE)
            entry.device.set_queue_legacy(index, q.num, q.addr, LGUEST_VRING_ALIGN)

    def kick(self, entry: LguestEntry, index: int) -> None:
        """A queue notification.  The guest may use queues before DRIVER_OK (the disk probes
        partitions during probe), so a kick starts the device, as the original did."""
        dev = entry.device
        if not dev.active:
            dev.activate(self.memory)
        if dev.runner is not None:
            dev.runner.notify(index)
        elif dev.process(index):
            dev.trigger.trigger(index)

    def irq_of(self, entry: LguestEntry, index: int) -> int:
        return entry.queues[index].irq
