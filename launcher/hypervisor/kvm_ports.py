"""The legacy PC ports a Linux guest touches that KVM's in-kernel devices do not serve.

Measured on the kvm_pvm host (kvm-host-notes.md): the 8250 at 0x3f8, CMOS data at
0x71 must read 0 (the RTC read loops forever on 0xff), the i8042 status port 0x64
reads 0 and a write of 0xfe there is the keyboard-controller reset Linux uses to
reboot.  Everything else is the bus default: reads 0xff, writes ignored.
"""
from __future__ import annotations

from typing import Callable

from launcher.uart import Uart8250

COM1_BASE, COM1_LEN, COM1_IRQ = 0x3F8, 8, 4
CMOS_INDEX, CMOS_DATA = 0x70, 0x71
I8042_DATA, I8042_STATUS = 0x60, 0x64
I8042_CMD_RESET = 0xFE


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


class I8042:
    """Just enough keyboard controller to reboot: status reads 0 (no data, input buffer empty)."""

    def __init__(self, on_reset: Callable[[], None]):
        self.on_reset = on_reset

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == I8042_STATUS - I8042_DATA and value & 0xFF == I8042_CMD_RESET:
            self.on_reset()
