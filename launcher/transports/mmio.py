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

Guest-physical rings become a SplitVirtqueue when QueueReady is written 1: the layout is
checked there (a bad one is refused, QueueReady stays 0) and the device builds its engine,
with the negotiated VIRTIO_F_EVENT_IDX, when the driver sets DRIVER_OK.
"""
from __future__ import annotations

import collections
import dataclasses
import enum
import logging
import threading
from enum import IntEnum, IntFlag
from typing import Callable

from launcher.devices.base import (
    VIRTIO_F_NOTIFY_ON_EMPTY, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
    DeviceStatus,
)
from launcher.errors import TransportError, VirtqueueError
from launcher.virtqueue import MAX_QUEUE_SIZE, SplitVirtqueue

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


class InterruptStatus(IntFlag):
    """InterruptStatus / InterruptACK bits (4.2.2)."""
    USED_BUFFER = 1         # a used buffer notification: some queue has new used entries
    CONFIG_CHANGE = 2       # the configuration space changed


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
QUEUE_LAYOUT_REGS = frozenset({MmioReg.QUEUE_NUM, MmioReg.QUEUE_DESC_LOW, MmioReg.QUEUE_DESC_HIGH,
                               MmioReg.QUEUE_DRIVER_LOW, MmioReg.QUEUE_DRIVER_HIGH,
                               MmioReg.QUEUE_DEVICE_LOW, MmioReg.QUEUE_DEVICE_HIGH})

# Transport-level feature bits (6): the ones a modern driver may accept from a virtio-mmio device.
TRANSPORT_FEATURES = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_INDIRECT_DESC)


class MmioRule(enum.Enum):
    """Each rule a driver can break through the register file; the value is the message."""
    CONTROL_REGISTER_WIDTH = "control registers take only 32-bit wide, 32-bit aligned accesses (4.2.2.2)"
    CONFIG_ACCESS_WIDTH = ("device configuration space takes 8-, 16- or 32-bit accesses aligned to their "
                           "width; 64-bit fields are read as two 32-bit halves (4.2.2.2)")
    UNDEFINED_REGISTER = "the driver must not access a location the register table does not describe (4.2.2.2)"
    WRITE_OF_READ_ONLY = "the driver must not write a read-only register (4.2.2.2)"
    READ_OF_WRITE_ONLY = "the driver must not read a write-only register (4.2.2.2)"
    FEATURES_BEFORE_DRIVER = ("the driver reads DeviceFeatures and writes DriverFeatures only after setting "
                              "ACKNOWLEDGE and DRIVER (3.1.1 steps 2-4)")
    FEATURES_AFTER_FEATURES_OK = "the driver must not change DriverFeatures once FEATURES_OK is set (3.1.1 step 5)"
    VERSION_1_REQUIRED = ("a version 2 virtio-mmio device needs VIRTIO_F_VERSION_1 (bit 32) accepted before "
                          "FEATURES_OK (6.1, 6.2; Linux: 'must provide VIRTIO_F_VERSION_1')")
    FEATURES_OK_NOT_REREAD = ("after setting FEATURES_OK the driver must re-read Status to see that it stuck, "
                              "before DRIVER_OK (3.1.1 step 6)")
    QUEUE_SETUP_OUTSIDE_WINDOW = ("virtqueues are set up after FEATURES_OK and before DRIVER_OK "
                                  "(3.1.1 step 7)")
    QUEUE_SETUP_WHILE_READY = ("QueueNum and the queue address registers must not be written while "
                               "QueueReady is non-zero (4.2.2.2)")
    QUEUE_NOT_PRESENT = "the selected queue does not exist (QueueNumMax reads 0 for it) (4.2.3.2)"
    QUEUE_NUM_INVALID = ("QueueNum must be a power of two between 1 and QueueNumMax (4.2.2.2, 2.7)")
    QUEUE_LAYOUT_INVALID = ("QueueReady=1 needs aligned rings inside guest memory at QueueDesc, "
                            "QueueDriver and QueueDevice (2.7, 4.2.3.2)")
    NOTIFY_QUEUE_NOT_READY = "the driver notified a queue that does not exist or is not ready (4.2.3.3)"

    @property
    def text(self) -> str:
        return self.value


class MmioRuleBroken(TransportError):
    """The driver broke a virtio-mmio access rule (raised in strict mode only)."""

    def __init__(self, device: str, rule: MmioRule, detail: str):
        self.rule, self.detail = rule, detail
        super().__init__(f"virtio-mmio {device}: {detail}: {rule.text} [{rule.name}]")


@dataclasses.dataclass
class MmioMetrics:
    """Counters of one transport; tests assert on their deltas."""
    register_reads: int = 0
    register_writes: int = 0
    notifies: int = 0               # QueueNotify writes that reached us (not via ioeventfd)
    interrupts: int = 0             # times `interrupt` was called
    reraised: int = 0               # of which after an ACK left bits pending
    rules_broken: collections.Counter = dataclasses.field(default_factory=collections.Counter)


@dataclasses.dataclass
class MmioQueue:
    """The driver's view of one queue's registers."""
    num_max: int
    num: int = 0
    desc: int = 0
    driver: int = 0
    device: int = 0
    ready: bool = False

    def clear(self) -> None:
        self.num = self.desc = self.driver = self.device = 0
        self.ready = False


def _set_half(value: int, half: int, high: bool) -> int:
    half &= 0xFFFFFFFF
    return (value & 0xFFFFFFFF) | (half << 32) if high else (value & ~0xFFFFFFFF) | half


class MmioTransport:
    """The virtio-mmio register file of one device.

    interrupt(): raise the device's interrupt line once (edge); InterruptStatus is set first.
    notify(index): a QueueNotify that reached us; default: the device runner's notify, or
    process the queue inline when the device has no runner (unit tests).
    """

    def __init__(self, device, memory, *, interrupt: Callable[[], None] = lambda: None,
                 notify: Callable[[int], None] | None = None, strict: bool = False,
                 event_idx: bool = True, name: str | None = None):
        self.device = device
        self.memory = memory
        self.interrupt = interrupt
        self.notify = notify or self._notify_device
        self.strict = strict
        self.name = name or getattr(device, "name", type(device).__name__)
        self.metrics = MmioMetrics()
        offered = device.offered & ~(1 << VIRTIO_F_NOTIFY_ON_EMPTY)   # legacy-only bit (6.3)
        offered |= TRANSPORT_FEATURES | ((1 << VIRTIO_RING_F_EVENT_IDX) if event_idx else 0)
        offered &= getattr(device, "feature_mask", -1)     # a vhost-user backend's limits
        device.offered = offered
        device.legacy = False           # a modern driver: FEATURES_OK is part of the handshake
        device.memory = memory
        device.trigger = self
        self.queues = [MmioQueue(slot.max_size) for slot in device.queues]
        self._isr_lock = threading.Lock()
        # A vhost-user backend signals the irqfd itself and cannot set InterruptStatus: for
        # such a device USED_BUFFER always reads set, so the driver looks at its rings on
        # every interrupt (an ACK of it changes nothing, and nothing is raised again).
        self._external_used = int(InterruptStatus.USED_BUFFER) if getattr(device, "external_queues", False) else 0
        self.interrupt_status = 0
        self.config_generation = 0
        self._reset_registers()

    def _reset_registers(self) -> None:
        self.device_features_sel = 0
        self.driver_features_sel = 0
        self.driver_features = 0
        self.queue_sel = 0
        self._features_ok_unconfirmed = False
        for queue in self.queues:
            queue.clear()
        with self._isr_lock:
            self.interrupt_status = 0

    # -- rules ----------------------------------------------------------------------------------
    def broke(self, rule: MmioRule, detail: str) -> None:
        self.metrics.rules_broken[rule.name] += 1
        log.warning("virtio-mmio %s: driver broke a rule: %s: %s", self.name, detail, rule.text)
        if self.strict:
            raise MmioRuleBroken(self.name, rule, detail)

    # -- the bus interface ----------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if offset >= CONFIG_SPACE:
            return self._read_config(offset - CONFIG_SPACE, size)
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
            self._write_config(offset - CONFIG_SPACE, size, value)
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
            if not dev.status & DeviceStatus.DRIVER:
                self.broke(MmioRule.FEATURES_BEFORE_DRIVER, f"DeviceFeatures read with Status {dev.status:#04x}")
                return 0
            return dev.offered >> (32 * self.device_features_sel) if self.device_features_sel < 2 else 0
        if reg is MmioReg.QUEUE_NUM_MAX:
            queue = self._selected(rule=None)
            return 0 if queue is None else queue.num_max
        if reg is MmioReg.QUEUE_READY:
            queue = self._selected(rule=None)
            return int(queue is not None and queue.ready)
        if reg is MmioReg.INTERRUPT_STATUS:
            with self._isr_lock:
                return self.interrupt_status | self._external_used
        if reg is MmioReg.STATUS:
            self._features_ok_unconfirmed = False
            return dev.status & 0xFF
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
            self._write_driver_features(value)
        elif reg is MmioReg.QUEUE_SEL:
            self.queue_sel = value
        elif reg in QUEUE_LAYOUT_REGS:
            self._write_queue_layout(reg, value)
        elif reg is MmioReg.QUEUE_READY:
            self._write_queue_ready(value)
        elif reg is MmioReg.QUEUE_NOTIFY:
            self._write_queue_notify(value)
        elif reg is MmioReg.INTERRUPT_ACK:
            self._ack(value)
        elif reg is MmioReg.STATUS:
            self._write_status(value)
        else:
            raise AssertionError(f"unhandled writable register {reg!r}")

    def _write_driver_features(self, value: int) -> None:
        status = self.device.status
        if not status & DeviceStatus.DRIVER:
            self.broke(MmioRule.FEATURES_BEFORE_DRIVER, f"DriverFeatures write of {value:#x} with Status {status:#04x}")
            return
        if status & DeviceStatus.FEATURES_OK:
            self.broke(MmioRule.FEATURES_AFTER_FEATURES_OK,
                       f"DriverFeatures write of {value:#x} with Status {status:#04x}")
            return
        if self.driver_features_sel >= 2:
            if value:
                log.info("virtio-mmio %s: ignoring driver feature bits %#x in word %d", self.name, value,
                         self.driver_features_sel)
            return
        self.driver_features = _set_half(self.driver_features, value, self.driver_features_sel == 1)

    def _write_status(self, value: int) -> None:
        dev = self.device
        new = value & 0xFF
        if new == 0:
            dev.set_status(0)
            self._reset_registers()
            return
        old = dev.status
        gained = new & ~old
        if gained & DeviceStatus.FEATURES_OK:
            if not self.driver_features >> VIRTIO_F_VERSION_1 & 1:
                self.broke(MmioRule.VERSION_1_REQUIRED,
                           f"FEATURES_OK with DriverFeatures {self.driver_features:#x}")
                return      # FEATURES_OK does not stick; the driver sees so when it re-reads
            if not dev.accept_features(self.driver_features):
                return
        if gained & DeviceStatus.DRIVER_OK and self._features_ok_unconfirmed:
            self.broke(MmioRule.FEATURES_OK_NOT_REREAD, f"DRIVER_OK written ({old:#04x} -> {new:#04x})")
        if dev.set_status(new) and gained & DeviceStatus.FEATURES_OK:
            self._features_ok_unconfirmed = True

    # -- queues ---------------------------------------------------------------------------------
    def _selected(self, rule: MmioRule | None, what: str = "") -> MmioQueue | None:
        if self.queue_sel < len(self.queues):
            return self.queues[self.queue_sel]
        if rule is not None:
            self.broke(rule, f"{what} for queue {self.queue_sel} (the device has {len(self.queues)})")
        return None

    def _in_setup_window(self, what: str) -> bool:
        status = self.device.status
        if status & DeviceStatus.FEATURES_OK and not status & DeviceStatus.DRIVER_OK:
            return True
        self.broke(MmioRule.QUEUE_SETUP_OUTSIDE_WINDOW, f"{what} with Status {status:#04x}")
        return False

    def _write_queue_layout(self, reg: MmioReg, value: int) -> None:
        what = f"{reg.name} write of {value:#x}"
        queue = self._selected(MmioRule.QUEUE_NOT_PRESENT, what)
        if queue is None or not self._in_setup_window(what):
            return
        if queue.ready:
            self.broke(MmioRule.QUEUE_SETUP_WHILE_READY, f"{what} to ready queue {self.queue_sel}")
            return
        if reg is MmioReg.QUEUE_NUM:
            if not 1 <= value <= min(queue.num_max, MAX_QUEUE_SIZE) or value & (value - 1):
                self.broke(MmioRule.QUEUE_NUM_INVALID,
                           f"QueueNum {value:#x} for queue {self.queue_sel} (QueueNumMax {queue.num_max:#x})")
                return
            queue.num = value
            return
        high = reg.name.endswith("_HIGH")
        field = {"DESC": "desc", "DRIVER": "driver", "DEVICE": "device"}[reg.name.split("_")[1]]
        setattr(queue, field, _set_half(getattr(queue, field), value, high))

    def _write_queue_ready(self, value: int) -> None:
        queue = self._selected(MmioRule.QUEUE_NOT_PRESENT, f"QueueReady write of {value:#x}")
        if queue is None:
            return
        index = self.queue_sel
        if not value:
            if queue.ready and not self.device.active:
                self.device.queues[index].size = 0      # the device will not build it at DRIVER_OK
            elif queue.ready:
                log.info("virtio-mmio %s: QueueReady=0 for live queue %d takes effect at the next reset",
                         self.name, index)
                return
            queue.ready = False
            return
        if queue.ready or not self._in_setup_window(f"QueueReady write of {value:#x}"):
            return
        if not queue.num:
            self.broke(MmioRule.QUEUE_NUM_INVALID, f"QueueReady=1 for queue {index} without a QueueNum")
            return
        try:
            probe = SplitVirtqueue(self.memory, queue.num, queue.desc, queue.driver, queue.device,
                                   event_idx=self.device.has_feature(VIRTIO_RING_F_EVENT_IDX))
        except VirtqueueError as err:
            self.broke(MmioRule.QUEUE_LAYOUT_INVALID, f"QueueReady=1 for queue {index}: {err}")
            return
        probe.close()
        self.device.set_queue(index, queue.num, queue.desc, queue.driver, queue.device)
        queue.ready = True

    def _write_queue_notify(self, value: int) -> None:
        self.metrics.notifies += 1
        if value >= len(self.queues) or not self.queues[value].ready:
            self.broke(MmioRule.NOTIFY_QUEUE_NOT_READY, f"QueueNotify of queue {value:#x}")
            return
        self.notify(value)

    def _notify_device(self, index: int) -> None:
        dev = self.device
        if dev.runner is not None:
            dev.runner.notify(index)
        elif dev.active and dev.process(index):
            self.trigger(index)

    # -- interrupts -----------------------------------------------------------------------------
    def trigger(self, queue_index: int) -> None:
        """The device's Trigger: a used-buffer notification (any queue: one line per device)."""
        self._raise(InterruptStatus.USED_BUFFER)

    def config_changed(self) -> None:
        """The device changed its config space: new generation, then a config-change interrupt."""
        self.config_generation = (self.config_generation + 1) & 0xFFFFFFFF
        self._raise(InterruptStatus.CONFIG_CHANGE)

    def _raise(self, bits: int) -> None:
        with self._isr_lock:
            self.interrupt_status |= int(bits)
            self.metrics.interrupts += 1
        self.interrupt()

    def _ack(self, value: int) -> None:
        with self._isr_lock:
            self.interrupt_status &= ~value & 0xFFFFFFFF
            pending = self.interrupt_status
            if pending:
                self.metrics.interrupts += 1
                self.metrics.reraised += 1
        if pending:
            # An edge-triggered line (irqfd) delivers one edge per signal: an event that came
            # in after the driver read InterruptStatus would otherwise wait for the next one.
            self.interrupt()

    # -- configuration space ----------------------------------------------------------------------
    def _config_width_ok(self, offset: int, size: int, what: str) -> bool:
        if size in (1, 2, 4) and offset % size == 0:
            return True
        self.broke(MmioRule.CONFIG_ACCESS_WIDTH, f"{size}-byte {what} at config offset {offset:#x}")
        return False

    def _read_config(self, offset: int, size: int) -> int:
        if not self._config_width_ok(offset, size, "read"):
            return 0
        return int.from_bytes(self.device.read_config(offset, size), "little")

    def _write_config(self, offset: int, size: int, value: int) -> None:
        if self._config_width_ok(offset, size, f"write of {value:#x}"):
            self.device.write_config(offset, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))

    def close(self) -> None:
        """Stop and close the device (threads joined, backend closed)."""
        self.device.close()

    def __repr__(self) -> str:
        return (f"MmioTransport({self.name}, status={self.device.status:#04x}, "
                f"isr={self.interrupt_status:#x}, queues={[q.ready for q in self.queues]})")
