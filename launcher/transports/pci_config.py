"""A PCI function's 256-byte configuration space (PCI Local Bus 3.0, 6.1) as a pure state machine.

Bytes and a per-byte mask of the bits the driver may write: writes to read-only bits are
dropped as hardware drops them (not a rule broken), so BAR sizing (write all ones, read the
size mask back, restore) works on the mask alone.  The owner (a virtio-pci function, the
host bridge) lays out its header and capabilities with the helpers here and hears about
writes through `on_write`.
"""
from __future__ import annotations

import enum
from typing import Callable

from launcher.transports.virtio_core import RuleBroken

CONFIG_SPACE_SIZE = 256


class PciReg(enum.IntEnum):
    """Type-0 header offsets (6.1)."""
    VENDOR_ID = 0x00
    DEVICE_ID = 0x02
    COMMAND = 0x04
    STATUS = 0x06
    REVISION_ID = 0x08
    CLASS_PROG = 0x09           # programming interface, subclass, base class: three bytes
    HEADER_TYPE = 0x0E
    BAR0 = 0x10
    SUBSYSTEM_VENDOR_ID = 0x2C
    SUBSYSTEM_ID = 0x2E
    CAPABILITIES_POINTER = 0x34
    INTERRUPT_LINE = 0x3C
    INTERRUPT_PIN = 0x3D


class Command(enum.IntFlag):
    IO_SPACE = 0x0001
    MEMORY_SPACE = 0x0002
    BUS_MASTER = 0x0004
    INTX_DISABLE = 0x0400


STATUS_INTERRUPT = 0x0008       # INTx asserted (6.2.3)
STATUS_CAPABILITIES_LIST = 0x0010
CAP_ID_VENDOR = 0x09            # vendor-specific capability: virtio's (4.1.4)
BAR_MEMORY_64 = 0x4             # memory BAR, 64-bit, not prefetchable (6.2.5.1)


class PciRule(enum.Enum):
    """Rules of the PCI side of a virtio-pci function; the value is the message."""
    CONFIG_ACCESS_INVALID = ("configuration accesses through 0xcfc are 1, 2 or 4 bytes inside one "
                             "aligned dword of a 256-byte space (PCI 3.0 3.2.2.3.2)")
    BAR_OVERLAP = ("a memory BAR must not be placed over another decoded range; the function stops "
                   "decoding it (PCI 3.0 6.2.5.1)")
    CAPABILITY_ACCESS_INVALID = ("common configuration fields take accesses of their natural width; "
                                 "64-bit ones two 32-bit halves (4.1.3.1)")
    UNDEFINED_REGISTER = "the driver must not access a BAR location no capability describes (4.1.4)"
    WRITE_OF_READ_ONLY = "the driver must not write a read-only common configuration field (4.1.4.3)"
    PCI_CFG_WINDOW_INVALID = ("the VIRTIO_PCI_CAP_PCI_CFG window needs length 1, 2 or 4 at an offset "
                              "aligned to it, inside the BAR (4.1.4.9.1)")

    @property
    def text(self) -> str:
        return self.value


class ConfigSpace:
    """Bytes, the writable-bit mask, and a capability list builder."""

    def __init__(self, on_write: Callable[[int, int], None] = lambda offset, size: None):
        self.data = bytearray(CONFIG_SPACE_SIZE)
        self.mask = bytearray(CONFIG_SPACE_SIZE)
        self.on_write = on_write
        self._last_cap = None

    # -- layout ---------------------------------------------------------------------------------
    def put(self, offset: int, size: int, value: int, writable: int = 0) -> None:
        self.data[offset:offset + size] = value.to_bytes(size, "little")
        self.mask[offset:offset + size] = writable.to_bytes(size, "little")

    def get(self, offset: int, size: int) -> int:
        return int.from_bytes(self.data[offset:offset + size], "little")

    def header(self, *, vendor: int, device: int, class_code: int, revision: int = 0,
               subsystem_vendor: int = 0, subsystem: int = 0, interrupt_pin: int = 0) -> None:
        self.put(PciReg.VENDOR_ID, 2, vendor)
        self.put(PciReg.DEVICE_ID, 2, device)
        self.put(PciReg.COMMAND, 2, 0, writable=int(Command.MEMORY_SPACE | Command.BUS_MASTER | Command.INTX_DISABLE))
        self.put(PciReg.REVISION_ID, 1, revision)
        self.put(PciReg.CLASS_PROG, 3, class_code)
        self.put(PciReg.SUBSYSTEM_VENDOR_ID, 2, subsystem_vendor)
        self.put(PciReg.SUBSYSTEM_ID, 2, subsystem)
        self.put(PciReg.INTERRUPT_LINE, 1, 0xFF if interrupt_pin else 0, writable=0xFF if interrupt_pin else 0)
        self.put(PciReg.INTERRUPT_PIN, 1, interrupt_pin)

    def bar64(self, index: int, address: int, size: int) -> None:
        """A 64-bit memory BAR in slots index and index+1; size a power of two >= 16."""
        offset = PciReg.BAR0 + 4 * index
        self.put(offset, 4, (address & 0xFFFFFFFF) | BAR_MEMORY_64, writable=~(size - 1) & 0xFFFFFFF0)
        self.put(offset + 4, 4, address >> 32, writable=0xFFFFFFFF)

    def bar64_address(self, index: int) -> int:
        offset = PciReg.BAR0 + 4 * index
        return (self.get(offset, 4) & ~0xF) | self.get(offset + 4, 4) << 32

    def add_capability(self, offset: int, cap_id: int, body: bytes) -> None:
        """A capability at offset (dword aligned): id, next, then body; chained after the last."""
        self.data[offset] = cap_id
        self.data[offset + 1] = 0
        self.data[offset + 2:offset + 2 + len(body)] = body
        if self._last_cap is None:
            self.put(PciReg.CAPABILITIES_POINTER, 1, offset)
            self.put(PciReg.STATUS, 2, self.get(PciReg.STATUS, 2) | STATUS_CAPABILITIES_LIST)
        else:
            self.data[self._last_cap + 1] = offset
        self._last_cap = offset

    @property
    def command(self) -> int:
        return self.get(PciReg.COMMAND, 2)

    def set_status_bits(self, bits: int, on: bool) -> None:
        status = self.get(PciReg.STATUS, 2)
        self.put(PciReg.STATUS, 2, status | bits if on else status & ~bits)

    # -- driver accesses (offset and size already checked by the host) ----------------------------
    def read(self, offset: int, size: int) -> int:
        return self.get(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        for i in range(size):
            byte, mask = value >> (8 * i) & 0xFF, self.mask[offset + i]
            self.data[offset + i] = (self.data[offset + i] & ~mask) | (byte & mask)
        self.on_write(offset, size)


class PciFunction:
    """What the host bridge needs of a function on its bus."""

    config: ConfigSpace

    def config_read(self, offset: int, size: int) -> int:
        return self.config.read(offset, size)

    def config_write(self, offset: int, size: int, value: int) -> None:
        self.config.write(offset, size, value)



class PciRuleBroken(RuleBroken):
    """The driver broke a PCI or virtio-pci access rule (raised in strict mode only)."""

    kind = "virtio-pci"
