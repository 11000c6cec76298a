"""virtio-mmio, version 2 (virtio 1.x, section 4.2): the register file as a pure state machine.

One MmioTransport fronts one device model (launcher.devices.base.VirtioDevice), the same
models the lguest bus serves.  The hypervisor maps a window of MMIO_WINDOW bytes and sends
every exit there to read(offset, size) / write(offset, size, value); nothing here owns a
thread or an fd.  Interrupts leave through the injected `interrupt` callable (on KVM an
irqfd), after InterruptStatus has been set; kicks go to the device's runner (on KVM the
QueueNotify write never reaches us: an ioeventfd signals the runner directly).

The driver's side of the protocol is checked the way the spec states it (4.2.2.2, 3.1.1).
A broken rule is guest data, not a launcher error: it is logged with the rule and the
values, counted in metrics.rules_broken[rule.name], and the offending access is ignored
(a refused read returns 0).  With strict=True (unit tests) MmioRuleBroken is raised instead.
The handshake and queue state behind the registers is VirtioTransportCore's, shared with
virtio-pci; this module decodes the register table.

Guest-physical rings become a SplitVirtqueue when QueueReady is written 1: the layout is
checked there (a bad one is refused, QueueReady stays 0) and the device builds its engine,
with the negotiated VIRTIO_F_EVENT_IDX, when the driver sets DRIVER_OK.
"""
from __future__ import annotations

import enum
import logging
from enum import IntEnum

from launcher.transports.virtio_core import RuleBroken, VirtioTransportCore
from launcher.transports.virtio_core import InterruptStatus  # noqa: F401  (InterruptStatus/InterruptACK, 4.2.2)

log = logging.getLogger(__name__)

MAGIC_VALUE = 0x74726976        # "virt", little-endian (4.2.2)
VERSION = 2                     # the modern (non-legacy) register layout
VENDOR_ID = 0x4C475548          # "HUGL": lguest-harness; drivers do not care
MMIO_WINDOW = 0x200             # registers 0x000..0x0ff, config space from 0x100
CONFIG_SPACE = 0x100
CONFIG_SPACE_SIZE = MMIO_WINDOW - CONFIG_SPACE


class MmioReg(IntEnum):
    """The register table (4.2.2, "MMIO Device Register Layout"); offsets from the base."""
    MAGIC_VALUE = 0x000
    VERSION = 0x004
    DEVICE_ID = 0x008
    VENDOR_ID = 0x00C
    DEVICE_FEATURES = 0x010
    DEVICE_FEATURES_SEL = 0x014
    DRIVER_FEATURES = 0x020
    DRIVER_FEATURES_SEL = 0x024
    QUEUE_SEL = 0x030
    QUEUE_NUM_MAX = 0x034
    QUEUE_NUM = 0x038
    QUEUE_READY = 0x044
    QUEUE_NOTIFY = 0x050
    INTERRUPT_STATUS = 0x060
    INTERRUPT_ACK = 0x064
    STATUS = 0x070
    QUEUE_DESC_LOW = 0x080
    QUEUE_DESC_HIGH = 0x084
    QUEUE_DRIVER_LOW = 0x090
    QUEUE_DRIVER_HIGH = 0x094
    QUEUE_DEVICE_LOW = 0x0A0
    QUEUE_DEVICE_HIGH = 0x0A4
    CONFIG_GENERATION = 0x0FC


_R = frozenset({MmioReg.MAGIC_VALUE, MmioReg.VERSION, MmioReg.DEVICE_ID, MmioReg.VENDOR_ID,
                MmioReg.DEVICE_FEATURES, MmioReg.QUEUE_NUM_MAX, MmioReg.INTERRUPT_STATUS,
                MmioReg.CONFIG_GENERATION})
_W = frozenset({MmioReg.DEVICE_FEATURES_SEL, MmioReg.DRIVER_FEATURES, MmioReg.DRIVER_FEATURES_SEL,
                MmioReg.QUEUE_SEL, MmioReg.QUEUE_NUM, MmioReg.QUEUE_NOTIFY, MmioReg.INTERRUPT_ACK,
                MmioReg.QUEUE_DESC_LOW, MmioReg.QUEUE_DESC_HIGH, MmioReg.QUEUE_DRIVER_LOW,
                MmioReg.QUEUE_DRIVER_HIGH, MmioReg.QUEUE_DEVICE_LOW, MmioReg.QUEUE_DEVICE_HIGH})
_RW = frozenset({MmioReg.QUEUE_READY, MmioReg.STATUS})
READABLE = _R | _RW
WRITABLE = _W | _RW
QUEUE_LAYOUT_REGS = frozenset({MmioReg.QUEUE_DESC_LOW, MmioReg.QUEUE_DESC_HIGH,
                               MmioReg.QUEUE_DRIVER_LOW, MmioReg.QUEUE_DRIVER_HIGH,
                               MmioReg.QUEUE_DEVICE_LOW, MmioReg.QUEUE_DEVICE_HIGH})

class MmioRule(enum.Enum):
    """The rules of virtio-mmio's register file itself (the handshake's are VirtioRule's)."""
    CONTROL_REGISTER_WIDTH = "control registers take only 32-bit wide, 32-bit aligned accesses (4.2.2.2)"
    UNDEFINED_REGISTER = "the driver must not access a location the register table does not describe (4.2.2.2)"
    WRITE_OF_READ_ONLY = "the driver must not write a read-only register (4.2.2.2)"
    READ_OF_WRITE_ONLY = "the driver must not read a write-only register (4.2.2.2)"

    @property
    def text(self) -> str:
        return self.value


class MmioRuleBroken(RuleBroken):
    """The driver broke a virtio-mmio access rule (raised in strict mode only)."""

    kind = "virtio-mmio"


class MmioTransport(VirtioTransportCore):
    """The virtio-mmio register file of one device (the state is VirtioTransportCore's).

    interrupt(): raise the device's interrupt line once (edge); InterruptStatus is set first.
    notify(index): a QueueNotify that reached us; default: the device runner's notify, or
    process the queue inline when the device has no runner (unit tests).
    """

    kind = "virtio-mmio"
    rule_broken = MmioRuleBroken

    # -- the bus interface ----------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if offset >= CONFIG_SPACE:
            return self.read_config(offset - CONFIG_SPACE, size)
        self.metrics.register_reads += 1
        reg = self._register(offset, size, "read")
        if reg is None:
            return 0
        if reg not in READABLE:
            self.broke(MmioRule.READ_OF_WRITE_ONLY, f"read of {reg.name} at {offset:#05x}")
            return 0
        return self._read_reg(reg) & 0xFFFFFFFF

    def write(self, offset: int, size: int, value: int) -> None:
        if offset >= CONFIG_SPACE:
            self.write_config(offset - CONFIG_SPACE, size, value)
            return
        self.metrics.register_writes += 1
        reg = self._register(offset, size, f"write of {value:#x}")
        if reg is None:
            return
        if reg not in WRITABLE:
            self.broke(MmioRule.WRITE_OF_READ_ONLY, f"write of {value:#x} to {reg.name} at {offset:#05x}")
            return
        self._write_reg(reg, value & 0xFFFFFFFF)

    def _register(self, offset: int, size: int, what: str) -> MmioReg | None:
        if size != 4 or offset % 4:
            self.broke(MmioRule.CONTROL_REGISTER_WIDTH, f"{size}-byte {what} at {offset:#05x}")
            return None
        try:
            return MmioReg(offset)
        except ValueError:
            self.broke(MmioRule.UNDEFINED_REGISTER, f"{what} at undefined offset {offset:#05x}")
            return None

    # -- reads ----------------------------------------------------------------------------------
    def _read_reg(self, reg: MmioReg) -> int:
        dev = self.device
        if reg is MmioReg.MAGIC_VALUE:
            return MAGIC_VALUE
        if reg is MmioReg.VERSION:
            return VERSION
        if reg is MmioReg.DEVICE_ID:
            return int(dev.device_id)
        if reg is MmioReg.VENDOR_ID:
            return VENDOR_ID
        if reg is MmioReg.DEVICE_FEATURES:
            return self.read_device_features()
        if reg is MmioReg.QUEUE_NUM_MAX:
            queue = self.selected(rule=None)
            return 0 if queue is None else queue.num_max
        if reg is MmioReg.QUEUE_READY:
            return self.read_queue_ready()
        if reg is MmioReg.INTERRUPT_STATUS:
            with self._isr_lock:
                return self.interrupt_status | self._external_used
        if reg is MmioReg.STATUS:
            return self.read_status()
        if reg is MmioReg.CONFIG_GENERATION:
            return self.config_generation
        raise AssertionError(f"unhandled readable register {reg!r}")

    # -- writes ---------------------------------------------------------------------------------
    def _write_reg(self, reg: MmioReg, value: int) -> None:
        if reg is MmioReg.DEVICE_FEATURES_SEL:
            self.device_features_sel = value
        elif reg is MmioReg.DRIVER_FEATURES_SEL:
            self.driver_features_sel = value
        elif reg is MmioReg.DRIVER_FEATURES:
            self.write_driver_features(value)
        elif reg is MmioReg.QUEUE_SEL:
            self.queue_sel = value
        elif reg is MmioReg.QUEUE_NUM:
            self.write_queue_num(value, f"QueueNum write of {value:#x}")
        elif reg in QUEUE_LAYOUT_REGS:
            field = {"DESC": "desc", "DRIVER": "driver", "DEVICE": "device"}[reg.name.split("_")[1]]
            self.write_queue_address(field, value, f"{reg.name} write of {value:#x}", reg.name.endswith("_HIGH"))
        elif reg is MmioReg.QUEUE_READY:
            self.write_queue_ready(value)
        elif reg is MmioReg.QUEUE_NOTIFY:
            self.notify_queue(value, "QueueNotify")
        elif reg is MmioReg.INTERRUPT_ACK:
            self.acknowledge(value)
        elif reg is MmioReg.STATUS:
            self.write_status(value)
        else:
            raise AssertionError(f"unhandled writable register {reg!r}")
