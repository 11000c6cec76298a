"""What every virtio 1.x transport keeps for one device, whatever its registers look like.

virtio-mmio (launcher.transports.mmio) and virtio-pci (launcher.transports.pci) differ in
how the driver reaches the fields (a register table; PCI capabilities pointing into a BAR),
not in what the fields mean.  VirtioTransportCore holds that meaning once: the feature
words and their selectors, the device status handshake (3.1.1), the selected queue and its
size and ring addresses (2.7, 4.1.4.3, 4.2.2), QueueReady, notifications, the interrupt
status bits and the device configuration space.  A transport subclass decodes its accesses
and calls these methods.

The driver's side of the protocol is checked the way the spec states it.  A broken rule is
guest data, not a launcher error: it is logged with the rule and the values, counted in
metrics.rules_broken[rule.name], and the offending access is ignored (a refused read
returns 0).  With strict=True (unit tests) the transport's RuleBroken class is raised instead.
"""
from __future__ import annotations

import collections
import dataclasses
import enum
import logging
import threading
from enum import IntFlag
from typing import Callable

from launcher.devices.base import (
    VIRTIO_F_NOTIFY_ON_EMPTY, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
    DeviceStatus,
)
from launcher.errors import TransportError, VirtqueueError
from launcher.virtqueue import MAX_QUEUE_SIZE, SplitVirtqueue

log = logging.getLogger(__name__)

# Transport-level feature bits (6): the ones a modern driver may accept from our transports.
TRANSPORT_FEATURES = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_INDIRECT_DESC)


class InterruptStatus(IntFlag):
    """The interrupt status bits (virtio-mmio InterruptStatus 4.2.2, virtio-pci ISR 4.1.4.5)."""
    USED_BUFFER = 1         # a used buffer notification: some queue has new used entries
    CONFIG_CHANGE = 2       # the configuration space changed


class VirtioRule(enum.Enum):
    """Rules of the device handshake and queue set-up that every transport enforces; the value
    is the message (sections: the generic one, then virtio-pci's and virtio-mmio's)."""
    CONFIG_ACCESS_WIDTH = ("device configuration space takes 8-, 16- or 32-bit accesses aligned to their "
                           "width; 64-bit fields are read as two 32-bit halves (4.1.3.1, 4.2.2.2)")
    FEATURES_BEFORE_DRIVER = ("the driver reads the device features and writes its own only after setting "
                              "ACKNOWLEDGE and DRIVER (3.1.1 steps 2-4)")
    FEATURES_AFTER_FEATURES_OK = "the driver must not change its features once FEATURES_OK is set (3.1.1 step 5)"
    VERSION_1_REQUIRED = ("a modern (non-legacy) device needs VIRTIO_F_VERSION_1 (bit 32) accepted before "
                          "FEATURES_OK (6.1, 6.2; Linux: 'must provide VIRTIO_F_VERSION_1')")
    FEATURES_OK_NOT_REREAD = ("after setting FEATURES_OK the driver must re-read the device status to see "
                              "that it stuck, before DRIVER_OK (3.1.1 step 6)")
    QUEUE_SETUP_OUTSIDE_WINDOW = ("virtqueues are set up after FEATURES_OK and before DRIVER_OK "
                                  "(3.1.1 step 7)")
    QUEUE_SETUP_WHILE_READY = ("the queue size and ring addresses must not be written while the queue is "
                               "enabled (4.1.4.3.2, 4.2.2.2)")
    QUEUE_NOT_PRESENT = "the selected queue does not exist (its maximum size reads 0) (4.1.4.3, 4.2.3.2)"
    QUEUE_NUM_INVALID = ("the queue size must be a power of two between 1 and the device's maximum "
                         "(2.7, 4.1.4.3.2, 4.2.2.2)")
    QUEUE_LAYOUT_INVALID = ("enabling a queue needs aligned rings inside guest memory at its descriptor, "
                            "driver and device area addresses (2.7, 4.1.5.1.3, 4.2.3.2)")
    NOTIFY_QUEUE_NOT_READY = "the driver notified a queue that does not exist or is not ready (4.1.5.2, 4.2.3.3)"

    @property
    def text(self) -> str:
        return self.value


class RuleBroken(TransportError):
    """The driver broke a transport access rule (raised in strict mode only)."""

    kind = "virtio"

    def __init__(self, device: str, rule: enum.Enum, detail: str):
        self.rule, self.detail = rule, detail
        super().__init__(f"{self.kind} {device}: {detail}: {rule.value} [{rule.name}]")


@dataclasses.dataclass
class TransportMetrics:
    """Counters of one transport; tests assert on their deltas."""
    register_reads: int = 0
    register_writes: int = 0
    notifies: int = 0               # queue notifications that reached us (not via ioeventfd)
    interrupts: int = 0             # times `interrupt` was called
    reraised: int = 0               # of which after an ACK left bits pending
    rules_broken: collections.Counter = dataclasses.field(default_factory=collections.Counter)


@dataclasses.dataclass
class QueueRegs:
    """The driver's view of one queue: size, ring addresses, ready."""
    num_max: int
    num: int = 0
    desc: int = 0
    driver: int = 0
    device: int = 0
    ready: bool = False

    def clear(self) -> None:
        self.num = self.desc = self.driver = self.device = 0
        self.ready = False


QUEUE_ADDRESSES = ("desc", "driver", "device")


def set_half(value: int, half: int, high: bool) -> int:
    """value with its low or high 32 bits replaced (64-bit fields written as two halves)."""
    half &= 0xFFFFFFFF
    return (value & 0xFFFFFFFF) | (half << 32) if high else (value & ~0xFFFFFFFF) | half


class VirtioTransportCore:
    """One device's transport state.  Subclasses set `kind` and `rule_broken`.

    interrupt(): raise the device's interrupt once; the interrupt status is set first.
    notify(index): a queue notification that reached us; default: the device runner's
    notify, or process the queue inline when the device has no runner (unit tests).
    """

    kind = "virtio"
    rule_broken: type[RuleBroken] = RuleBroken

    def __init__(self, device, memory, *, interrupt: Callable[[], None] = lambda: None,
                 notify: Callable[[int], None] | None = None, strict: bool = False,
                 event_idx: bool = True, name: str | None = None):
        self.device = device
        self.memory = memory
        self.interrupt = interrupt
        self.notify = notify or self._notify_device
        self.strict = strict
        self.name = name or getattr(device, "name", type(device).__name__)
        self.metrics = TransportMetrics()
        offered = device.offered & ~(1 << VIRTIO_F_NOTIFY_ON_EMPTY)   # legacy-only bit (6.3)
        offered |= TRANSPORT_FEATURES | ((1 << VIRTIO_RING_F_EVENT_IDX) if event_idx else 0)
        offered &= getattr(device, "feature_mask", -1)     # a vhost-user backend's limits
        device.offered = offered
        device.legacy = False           # a modern driver: FEATURES_OK is part of the handshake
        device.memory = memory
        device.trigger = self
        self.queues = [QueueRegs(slot.max_size) for slot in device.queues]
        self._isr_lock = threading.Lock()
        # A vhost-user backend signals the irqfd itself and cannot set the interrupt status: for
        # such a device USED_BUFFER always reads set, so the driver looks at its rings on every
        # interrupt (an ACK of it changes nothing, and nothing is raised again).
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
    def broke(self, rule: enum.Enum, detail: str) -> None:
        self.metrics.rules_broken[rule.name] += 1
        log.warning("%s %s: driver broke a rule: %s: %s", self.kind, self.name, detail, rule.value)
        if self.strict:
            raise self.rule_broken(self.name, rule, detail)

    # -- features and status (3.1.1) --------------------------------------------------------------
    def read_device_features(self) -> int:
        """The 32-bit word of the offered features that device_features_sel selects."""
        status = self.device.status
        if not status & DeviceStatus.DRIVER:
            self.broke(VirtioRule.FEATURES_BEFORE_DRIVER, f"device features read with status {status:#04x}")
            return 0
        sel = self.device_features_sel
        return (self.device.offered >> (32 * sel)) & 0xFFFFFFFF if sel < 2 else 0

    def write_driver_features(self, value: int) -> None:
        status = self.device.status
        if not status & DeviceStatus.DRIVER:
            self.broke(VirtioRule.FEATURES_BEFORE_DRIVER,
                       f"driver features write of {value:#x} with status {status:#04x}")
            return
        if status & DeviceStatus.FEATURES_OK:
            self.broke(VirtioRule.FEATURES_AFTER_FEATURES_OK,
                       f"driver features write of {value:#x} with status {status:#04x}")
            return
        if self.driver_features_sel >= 2:
            if value:
                log.info("%s %s: ignoring driver feature bits %#x in word %d", self.kind, self.name, value,
                         self.driver_features_sel)
            return
        self.driver_features = set_half(self.driver_features, value, self.driver_features_sel == 1)

    def read_status(self) -> int:
        self._features_ok_unconfirmed = False
        return self.device.status & 0xFF

    def write_status(self, value: int) -> None:
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
                self.broke(VirtioRule.VERSION_1_REQUIRED, f"FEATURES_OK with driver features {self.driver_features:#x}")
                return      # FEATURES_OK does not stick; the driver sees so when it re-reads
            if not dev.accept_features(self.driver_features):
                return
        if gained & DeviceStatus.DRIVER_OK and self._features_ok_unconfirmed:
            self.broke(VirtioRule.FEATURES_OK_NOT_REREAD, f"DRIVER_OK written ({old:#04x} -> {new:#04x})")
        if dev.set_status(new) and gained & DeviceStatus.FEATURES_OK:
            self._features_ok_unconfirmed = True

    # -- queues ---------------------------------------------------------------------------------
    def selected(self, rule: enum.Enum | None, what: str = "") -> QueueRegs | None:
        if self.queue_sel < len(self.queues):
            return self.queues[self.queue_sel]
        if rule is not None:
            self.broke(rule, f"{what} for queue {self.queue_sel} (the device has {len(self.queues)})")
        return None

    def _in_setup_window(self, what: str) -> bool:
        status = self.device.status
        if status & DeviceStatus.FEATURES_OK and not status & DeviceStatus.DRIVER_OK:
            return True
        self.broke(VirtioRule.QUEUE_SETUP_OUTSIDE_WINDOW, f"{what} with status {status:#04x}")
        return False

    def _settable_queue(self, what: str) -> QueueRegs | None:
        queue = self.selected(VirtioRule.QUEUE_NOT_PRESENT, what)
        if queue is None or not self._in_setup_window(what):
            return None
        if queue.ready:
            self.broke(VirtioRule.QUEUE_SETUP_WHILE_READY, f"{what} to ready queue {self.queue_sel}")
            return None
        return queue

    def write_queue_num(self, value: int, what: str) -> None:
        queue = self._settable_queue(what)
        if queue is None:
            return
        if not 1 <= value <= min(queue.num_max, MAX_QUEUE_SIZE) or value & (value - 1):
            self.broke(VirtioRule.QUEUE_NUM_INVALID,
                       f"queue size {value:#x} for queue {self.queue_sel} (maximum {queue.num_max:#x})")
            return
        queue.num = value

    def write_queue_address(self, field: str, value: int, what: str, high: bool | None = None) -> None:
        """field: one of QUEUE_ADDRESSES; high: which 32-bit half, or None for all 64 bits."""
        queue = self._settable_queue(what)
        if queue is None:
            return
        new = value & 0xFFFFFFFFFFFFFFFF if high is None else set_half(getattr(queue, field), value, high)
        setattr(queue, field, new)

    def read_queue_ready(self) -> int:
        queue = self.selected(rule=None)
        return int(queue is not None and queue.ready)

    def write_queue_ready(self, value: int) -> None:
        queue = self.selected(VirtioRule.QUEUE_NOT_PRESENT, f"queue enable write of {value:#x}")
        if queue is None:
            return
        index = self.queue_sel
        if not value:
            if queue.ready and not self.device.active:
                self.device.queues[index].size = 0      # the device will not build it at DRIVER_OK
            elif queue.ready:
                log.info("%s %s: disabling live queue %d takes effect at the next reset", self.kind, self.name,
                         index)
                return
            queue.ready = False
            return
        if queue.ready or not self._in_setup_window(f"queue enable write of {value:#x}"):
            return
        if not queue.num:
            self.broke(VirtioRule.QUEUE_NUM_INVALID, f"queue {index} enabled without a queue size")
            return
        try:
            probe = SplitVirtqueue(self.memory, queue.num, queue.desc, queue.driver, queue.device,
                                   event_idx=self.device.has_feature(VIRTIO_RING_F_EVENT_IDX))
        except VirtqueueError as err:
            self.broke(VirtioRule.QUEUE_LAYOUT_INVALID, f"queue {index} enabled: {err}")
            return
        probe.close()
        self.device.set_queue(index, queue.num, queue.desc, queue.driver, queue.device)
        queue.ready = True

    def notify_queue(self, index: int, what: str) -> None:
        self.metrics.notifies += 1
        if index >= len(self.queues) or not self.queues[index].ready:
            self.broke(VirtioRule.NOTIFY_QUEUE_NOT_READY, f"{what} of queue {index:#x}")
            return
        self.notify(index)

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

    def acknowledge(self, bits: int) -> None:
        """Clear `bits` of the interrupt status; signal again if others stay pending."""
        with self._isr_lock:
            self.interrupt_status &= ~bits & 0xFFFFFFFF
            pending = self.interrupt_status
            if pending:
                self.metrics.interrupts += 1
                self.metrics.reraised += 1
        if pending:
            # An edge-triggered line (irqfd) delivers one edge per signal: an event that came
            # in after the driver read the status would otherwise wait for the next one.
            self.interrupt()

    def take_interrupt_status(self) -> int:
        """Read-and-clear (virtio-pci's ISR, 4.1.4.5): what came in after this read raises anew."""
        with self._isr_lock:
            bits, self.interrupt_status = self.interrupt_status, 0
        return bits | self._external_used

    # -- configuration space ----------------------------------------------------------------------
    def _config_width_ok(self, offset: int, size: int, what: str) -> bool:
        if size in (1, 2, 4) and offset % size == 0:
            return True
        self.broke(VirtioRule.CONFIG_ACCESS_WIDTH, f"{size}-byte {what} at config offset {offset:#x}")
        return False

    def read_config(self, offset: int, size: int) -> int:
        if not self._config_width_ok(offset, size, "read"):
            return 0
        return int.from_bytes(self.device.read_config(offset, size), "little")

    def write_config(self, offset: int, size: int, value: int) -> None:
        if self._config_width_ok(offset, size, f"write of {value:#x}"):
            self.device.write_config(offset, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))

    def close(self) -> None:
        """Stop and close the device (threads joined, backend closed)."""
        self.device.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name}, status={self.device.status:#04x}, "
                f"isr={self.interrupt_status:#x}, queues={[q.ready for q in self.queues]})")
