"""An i8042 keyboard controller with no devices behind it: enough for Linux to probe it cleanly.

A stock kernel's i8042 driver reads and writes the controller's command byte (CTR), may run
the controller and port self-tests, and gives up after ~0.5 s per command that no byte
answers ("Can't read CTR while initializing i8042"); our old stub, whose status never showed
a byte, cost a stock boot ~2.7 s and a failed probe.  This controller answers the controller
commands (Linux's drivers/input/serio/i8042.h names) through its output buffer, polled by
the driver through the status port; it raises no interrupts, since nothing behind it ever
sends a byte of its own.  The launcher boots the guest with i8042.noaux (no mouse port),
i8042.nomux and i8042.dumbkbd (the keyboard port is there, but no keyboard answers
commands), as Firecracker does; i8042.nopnp skips looking for PNP/ACPI entries we do not
describe.  Writing 0xFE to the command port (pulse the reset line) resets the machine,
which is how Linux reboots when ACPI cannot.
"""
from __future__ import annotations

import enum
from collections import deque
from typing import Callable

DATA_PORT, COMMAND_PORT = 0x60, 0x64
PORTS = 5                           # 0x60..0x64 (0x61-0x63 belong to nobody here: no PC speaker)
KERNEL_OPTIONS = ("i8042.noaux", "i8042.nomux", "i8042.dumbkbd", "i8042.nopnp")


class Status(enum.IntFlag):
    OBF = 0x01          # output buffer full: a byte waits at 0x60
    SYS = 0x04          # the system flag, set once the self-test passed
    CMDDAT = 0x08       # the last write went to the command port
    KEYLOCK = 0x10      # set: the keyboard is not locked


class Ctr(enum.IntFlag):
    KBDINT = 0x01
    AUXINT = 0x02
    SYS = 0x04
    KBDDIS = 0x10
    AUXDIS = 0x20
    XLATE = 0x40


class Command(enum.IntEnum):
    READ_CTR = 0x20
    WRITE_CTR = 0x60
    AUX_DISABLE = 0xA7
    AUX_ENABLE = 0xA8
    AUX_TEST = 0xA9
    SELF_TEST = 0xAA
    KBD_TEST = 0xAB
    KBD_DISABLE = 0xAD
    KBD_ENABLE = 0xAE
    READ_OUTPUT_PORT = 0xD0
    WRITE_OUTPUT_PORT = 0xD1
    KBD_LOOP = 0xD2
    AUX_LOOP = 0xD3
    AUX_SEND = 0xD4
    PULSE_RESET = 0xFE


SELF_TEST_PASSED = 0x55
PORT_TEST_PASSED = 0x00
AUX_TEST_CLOCK_STUCK_LOW = 0x01     # no mouse port
OUTPUT_PORT_RESET_LINE = 0x01       # output port bit 0 low resets the CPU
OUTPUT_PORT_DEFAULT = 0x01 | 0x02   # reset line high, A20 enabled
# Commands followed by one data byte written to 0x60.
TAKES_DATA = frozenset({Command.WRITE_CTR, Command.WRITE_OUTPUT_PORT, Command.KBD_LOOP, Command.AUX_LOOP,
                        Command.AUX_SEND})
# Commands that only flip CTR bits: (bits to set, bits to clear).
CTR_TOGGLES = {
    Command.AUX_DISABLE: (Ctr.AUXDIS, 0), Command.AUX_ENABLE: (0, Ctr.AUXDIS),
    Command.KBD_DISABLE: (Ctr.KBDDIS, 0), Command.KBD_ENABLE: (0, Ctr.KBDDIS),
}
OUTPUT_DEPTH = 16                   # Linux flushes at most I8042_BUFFER_SIZE bytes


class I8042:
    """The controller as a bus device at 0x60 (offset 0: data) .. 0x64 (offset 4: status/command)."""

    def __init__(self, on_reset: Callable[[], None]):
        self.on_reset = on_reset
        self.ctr = Ctr.KBDINT | Ctr.SYS | Ctr.XLATE
        self.status = Status.KEYLOCK
        self.output: deque[int] = deque(maxlen=OUTPUT_DEPTH)
        self.pending: Command | None = None     # a command waiting for its data byte

    # -- the bus interface ---------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if offset == COMMAND_PORT - DATA_PORT:
            return self.status | (Status.OBF if self.output else 0)
        if offset == 0:
            return self.output.popleft() if self.output else 0
        return 0xFF

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == COMMAND_PORT - DATA_PORT:
            self.status |= Status.CMDDAT
            self._command(value)
        elif offset == 0:
            self.status &= ~Status.CMDDAT
            self._data(value)

    # -- commands ----------------------------------------------------------------------
    def _command(self, value: int) -> None:
        self.pending = None
        try:
            command = Command(value)
        except ValueError:
            if 0xF0 <= value <= 0xFF and not value & OUTPUT_PORT_RESET_LINE:
                self.on_reset()             # "pulse output lines" with the reset line among them
            return
        if command in TAKES_DATA:
            self.pending = command
        elif command in CTR_TOGGLES:
            on, off = CTR_TOGGLES[command]
            self.ctr = Ctr((self.ctr | on) & ~off)
        elif command is Command.READ_CTR:
            self.output.append(self.ctr)
        elif command is Command.SELF_TEST:
            self.status |= Status.SYS
            self.output.append(SELF_TEST_PASSED)
        elif command is Command.KBD_TEST:
            self.output.append(PORT_TEST_PASSED)
        elif command is Command.AUX_TEST:
            self.output.append(AUX_TEST_CLOCK_STUCK_LOW)
        elif command is Command.READ_OUTPUT_PORT:
            self.output.append(OUTPUT_PORT_DEFAULT)
        elif command is Command.PULSE_RESET:
            self.on_reset()

    def _data(self, value: int) -> None:
        command, self.pending = self.pending, None
        if command is Command.WRITE_CTR:
            self.ctr = Ctr(value)
        elif command is Command.WRITE_OUTPUT_PORT:
            if not value & OUTPUT_PORT_RESET_LINE:
                self.on_reset()
        elif command is Command.KBD_LOOP:
            self.output.append(value)
        # AUX_LOOP / AUX_SEND, and bytes for the keyboard: no mouse and no keyboard answer them.
