"""Port/MMIO buses: range lookup, overlap refusal, unclaimed defaults."""
import pytest

from launcher.hypervisor.bus import mmio_bus, port_bus
from launcher.hypervisor.errors import BusConflict


class Reg:
    def __init__(self):
        self.writes = []

    def read(self, offset, size):
        return 0x40 + offset

    def write(self, offset, size, value):
        self.writes.append((offset, size, value))


def test_lookup_by_range_and_offset():
    bus, a, b = port_bus(), Reg(), Reg()
    bus.register(0x3F8, 8, a)
    bus.register(0x70, 2, b)
    assert bus.read(0x3FD, 1) == 0x45
    assert bus.write(0x71, 1, 9) and b.writes == [(1, 1, 9)]
    assert bus.read(0x400, 2) == 0xFFFF and bus.unclaimed == {0x400: 1}


@pytest.mark.parametrize("base,length", [(0x3F0, 9), (0x3FF, 1), (0x3F8, 8), (0x3F4, 0x20)])
def test_overlaps_are_refused(base, length):
    bus = port_bus()
    bus.register(0x3F8, 8, Reg())
    with pytest.raises(BusConflict, match="overlaps"):
        bus.register(base, length, Reg())


def test_unclaimed_mmio_write_reports_false():
    bus = mmio_bus()
    assert bus.write(0xD0000000, 4, 1) is False
    assert bus.read(0xD0000000, 8) == 0xFFFFFFFFFFFFFFFF
