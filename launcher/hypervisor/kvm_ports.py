"""The legacy PC ports a Linux guest touches that KVM's in-kernel devices do not serve.

Measured on the kvm_pvm host (kvm-host-notes.md): the 8250 at 0x3f8 and CMOS data at
0x71, which must read 0 (the RTC read loops forever on 0xff).  The keyboard controller
at 0x60/0x64 is launcher.hypervisor.i8042.  Everything else is the bus default: reads
0xff, writes ignored.
"""
from __future__ import annotations

from launcher.uart import Uart8250

COM1_BASE, COM1_LEN, COM1_IRQ = 0x3F8, 8, 4
CMOS_INDEX, CMOS_DATA = 0x70, 0x71


class UartPorts:
    """Adapts the pure Uart8250 to the bus; a lock is held by the caller's device lock."""

    def __init__(self, uart: Uart8250, lock):
        self.uart, self.lock = uart, lock

    def read(self, offset: int, size: int) -> int:
        with self.lock:
            return self.uart.read_reg(offset)

    def write(self, offset: int, size: int, value: int) -> None:
        with self.lock:
            self.uart.write_reg(offset, value & 0xFF)


class Cmos:
    """Index register ignored, data reads 0: "no RTC time", which Linux accepts."""

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        pass

