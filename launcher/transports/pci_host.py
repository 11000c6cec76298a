"""PCI bus 0 behind configuration mechanism #1 (PCI 3.0, 3.2.2.3.2): ports 0xcf8 (address) and
0xcfc-0xcff (data), a host bridge at 00:00.0 and one function per slot after it.

The host is registered on the port bus as one 8-port range.  CONFIG_ADDRESS reads back what
was written (Linux's pci_check_type1 depends on it); a data access goes to the function the
address names, at register (address & 0xfc) + the port's byte.  An absent function, a
disabled address or an extended register number reads all ones, as on real hardware.
"""
from __future__ import annotations

import collections
import dataclasses
import logging

from launcher.transports.pci_config import ConfigSpace, PciFunction, PciRule, PciRuleBroken

log = logging.getLogger(__name__)

CONFIG_ADDRESS_PORT = 0xCF8
CONFIG_PORTS = 8                # 0xcf8-0xcff
DATA_OFFSET = 4                 # 0xcfc within the range
ENABLE = 1 << 31
HOST_BRIDGE_VENDOR = 0x1B36     # Red Hat, Inc.: the QEMU PCIe host bridge's ids; no Linux quirks
HOST_BRIDGE_DEVICE = 0x0008
CLASS_HOST_BRIDGE = 0x060000    # Linux's pci_sanity_check wants a host bridge (or VGA) on bus 0
SLOTS = 32


@dataclasses.dataclass(frozen=True)
class IntxRoute:
    """How a function's INTx pin reaches the interrupt controller: what an MP table's I/O
    interrupt entry for the PCI bus says (source bus 0, source IRQ (slot << 2) | (pin - 1))."""
    slot: int
    pin: int                    # 1 = INTA#
    irq: int                    # the ISA/IOAPIC input the launcher drives; also INTERRUPT_LINE

    @property
    def mp_source_irq(self) -> int:
        return self.slot << 2 | (self.pin - 1)


class HostBridge(PciFunction):
    def __init__(self):
        self.config = ConfigSpace()
        self.config.header(vendor=HOST_BRIDGE_VENDOR, device=HOST_BRIDGE_DEVICE, class_code=CLASS_HOST_BRIDGE)


class PciHost:
    """Configuration mechanism #1 over bus 0: read(offset, size) / write(offset, size, value)
    for ports 0xcf8 + offset."""

    def __init__(self, *, strict: bool = False):
        self.strict = strict
        self.address = 0
        self.functions: dict[int, PciFunction] = {0: HostBridge()}
        self.rules_broken: collections.Counter = collections.Counter()

    def add(self, function: PciFunction) -> int:
        """Put function in the next free slot; returns the slot."""
        slot = next(s for s in range(SLOTS) if s not in self.functions)
        self.functions[slot] = function
        return slot

    def _broke(self, detail: str) -> None:
        rule = PciRule.CONFIG_ACCESS_INVALID
        self.rules_broken[rule.name] += 1
        log.warning("pci: driver broke a rule: %s: %s", detail, rule.text)
        if self.strict:
            raise PciRuleBroken("host bridge", rule, detail)

    def _target(self, offset: int, size: int, what: str) -> tuple[PciFunction, int] | None:
        byte = offset - DATA_OFFSET
        if size not in (1, 2, 4) or byte % size:
            self._broke(f"{size}-byte {what} at port {CONFIG_ADDRESS_PORT + offset:#x}")
            return None
        address = self.address
        bus, slot, fn = address >> 16 & 0xFF, address >> 11 & 0x1F, address >> 8 & 0x7
        if not address & ENABLE or address & 0x7F000000 or bus or fn:
            return None
        function = self.functions.get(slot)
        return None if function is None else (function, (address & 0xFC) + byte)

    def read(self, offset: int, size: int) -> int:
        if offset < DATA_OFFSET:
            return self.address >> (8 * offset) & ((1 << (8 * size)) - 1) if offset + size <= 4 else 0
        target = self._target(offset, size, "read")
        if target is None:
            return (1 << (8 * size)) - 1
        function, register = target
        return function.config_read(register, size)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset < DATA_OFFSET:
            if offset == 0 and size == 4:       # byte writes to 0xcf8-0xcfb are other mechanisms' probes
                self.address = value & 0xFFFFFFFF
            return
        target = self._target(offset, size, f"write of {value:#x}")
        if target is not None:
            function, register = target
            function.config_write(register, size, value & ((1 << (8 * size)) - 1))
