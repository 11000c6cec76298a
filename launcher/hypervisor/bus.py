"""Address-range → device registries for port I/O and MMIO exits.

A device is anything with read(offset, size) -> int and write(offset, size, value);
offset is relative to the start of the range it registered.  Unclaimed addresses
get the bus's default (ports: reads 0xff.., writes ignored) and are counted, so a
test can see what the guest probed.
"""
from __future__ import annotations

import bisect
from typing import Protocol

from launcher.hypervisor.errors import BusConflict


class BusDevice(Protocol):
    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...


class Bus:
    def __init__(self, name: str, unclaimed_read: int):
        self.name = name
        self.unclaimed_read = unclaimed_read
        self._starts: list[int] = []
        self._ranges: list[tuple[int, int, BusDevice]] = []
        self.unclaimed: dict[int, int] = {}

    def register(self, base: int, length: int, device: BusDevice) -> None:
        if length <= 0:
            raise BusConflict(f"{self.name} range at {base:#x} has length {length}")
        i = bisect.bisect_left(self._starts, base)
        neighbours = self._ranges[max(i - 1, 0):i + 1]
        for start, end, _ in neighbours:
            if base < end and start < base + length:
                raise BusConflict(
                    f"{self.name} range {base:#x}+{length:#x} overlaps {start:#x}..{end:#x}")
        self._starts.insert(i, base)
        self._ranges.insert(i, (base, base + length, device))

    def unregister(self, base: int) -> None:
        """Remove the range that starts at base (a PCI BAR that moved or stopped decoding)."""
        i = bisect.bisect_left(self._starts, base)
        if i == len(self._starts) or self._starts[i] != base:
            raise BusConflict(f"{self.name}: no range starts at {base:#x}")
        del self._starts[i], self._ranges[i]

    def find(self, addr: int) -> tuple[int, BusDevice] | None:
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0:
            start, end, device = self._ranges[i]
            if addr < end:
                return start, device
        return None

    def read(self, addr: int, size: int) -> int:
        hit = self.find(addr)
        if hit is None:
            self.unclaimed[addr] = self.unclaimed.get(addr, 0) + 1
            return self.unclaimed_read & ((1 << (8 * size)) - 1)
        start, device = hit
        return device.read(addr - start, size)

    def write(self, addr: int, size: int, value: int) -> bool:
        """Returns False when nobody claims addr (the caller may turn it into a Notify)."""
        hit = self.find(addr)
        if hit is None:
            self.unclaimed[addr] = self.unclaimed.get(addr, 0) + 1
            return False
        start, device = hit
        device.write(addr - start, size, value)
        return True


def port_bus() -> Bus:
    return Bus("port I/O", unclaimed_read=0xFFFFFFFF)


def mmio_bus() -> Bus:
    return Bus("MMIO", unclaimed_read=0xFFFFFFFFFFFFFFFF)
