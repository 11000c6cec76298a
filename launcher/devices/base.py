"""The virtio device model: identity, features, config space, status life cycle and queues.

A device is a state machine (virtio 1.x, section 2 "Basic Facilities of a Virtio Device").
It owns no thread and no fd: a transport drives it through set_status / accept_features /
read_config / write_config / set_queue_*, and a runner (launcher.io.service.QueueWorkers)
calls process(index) from one service thread per queue.  Interrupts leave through the
Trigger the transport supplies.

Guest faults are data: a broken request becomes a status byte or a zero-length used entry,
a log line and a tick of metrics.guest_faults.  With strict=True (unit tests) the fault is
raised instead, after the chain has been completed so the rings stay consistent.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from enum import IntEnum, IntFlag
from typing import Callable, Iterable, Protocol

from launcher.errors import DeviceError, VirtqueueError
from launcher.memory import GuestMemory
from launcher.virtqueue import Chain, ChainError, SplitVirtqueue, legacy_layout

log = logging.getLogger(__name__)


# -- identity and bits ------------------------------------------------------------------------

class DeviceId(IntEnum):
    """Device IDs (virtio 1.x, section 5)."""
    NET = 1
    BLOCK = 2
    CONSOLE = 3
    ENTROPY = 4     # virtio-rng
    FS = 26         # virtio-fs


class DeviceStatus(IntFlag):
    """The device status field (2.1)."""
    ACKNOWLEDGE = 1
    DRIVER = 2
    DRIVER_OK = 4
    FEATURES_OK = 8
    DEVICE_NEEDS_RESET = 0x40
    FAILED = 0x80


# Reserved feature bits (6) that the device model itself acts on.
VIRTIO_F_NOTIFY_ON_EMPTY = 24
VIRTIO_RING_F_INDIRECT_DESC = 28
VIRTIO_RING_F_EVENT_IDX = 29
VIRTIO_F_VERSION_1 = 32

_A = DeviceStatus.ACKNOWLEDGE
_D = DeviceStatus.DRIVER
_FO = DeviceStatus.FEATURES_OK
_OK = DeviceStatus.DRIVER_OK
_F = DeviceStatus.FAILED

# 3.1.1 Driver Requirements: Device Initialization.  Each status the driver may write, and the
# statuses it may write next.  Writing 0 is a reset (always allowed), rewriting the same value
# is harmless, FAILED may be added at any step, and nothing but a reset leaves FAILED.
STATUS_TRANSITIONS: dict[int, frozenset[int]] = {
    0:                   frozenset({0, _A, _F}),
    _A:                  frozenset({0, _A, _A | _D, _A | _F}),
    _A | _D:             frozenset({0, _A | _D, _A | _D | _FO, _A | _D | _F}),
    _A | _D | _FO:       frozenset({0, _A | _D | _FO, _A | _D | _FO | _OK, _A | _D | _FO | _F}),
    _A | _D | _FO | _OK: frozenset({0, _A | _D | _FO | _OK, _A | _D | _FO | _OK | _F}),
    _F:                  frozenset({0, _F}),
    _A | _F:             frozenset({0, _A | _F}),
    _A | _D | _F:        frozenset({0, _A | _D | _F}),
    _A | _D | _FO | _F:  frozenset({0, _A | _D | _FO | _F}),
    _A | _D | _FO | _OK | _F: frozenset({0, _A | _D | _FO | _OK | _F}),
}

# 7.1 Legacy interface: a legacy driver (lguest's, and any driver without VIRTIO_F_VERSION_1)
# never writes FEATURES_OK; it goes from DRIVER straight to DRIVER_OK.
LEGACY_STATUS_TRANSITIONS: dict[int, frozenset[int]] = {
    **STATUS_TRANSITIONS,
    _A | _D:             STATUS_TRANSITIONS[_A | _D] | {_A | _D | _OK},
    _A | _D | _OK:       frozenset({0, _A | _D | _OK, _A | _D | _OK | _F}),
    _A | _D | _OK | _F:  frozenset({0, _A | _D | _OK | _F}),
}


def status_transition_allowed(old: int, new: int, legacy: bool = False) -> bool:
    table = LEGACY_STATUS_TRANSITIONS if legacy else STATUS_TRANSITIONS
    return new in table.get(old, frozenset({0}))


def feature_bits(*bits: int) -> int:
    mask = 0
    for bit in bits:
        mask |= 1 << bit
    return mask


# -- errors -----------------------------------------------------------------------------------

class GuestFault(DeviceError):
    """The guest broke a device rule.  `written` is the used length to report for the chain
    (a status byte already written counts); the device carries on."""

    written = 0


class StatusTransitionRefused(GuestFault):
    def __init__(self, device: str, old: int, new: int):
        self.old, self.new = old, new
        super().__init__(f"{device}: status {old:#04x} -> {new:#04x} is not an allowed transition "
                         f"(3.1.1: set ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK in order; 0 resets)")


class FeaturesNotOffered(GuestFault):
    def __init__(self, device: str, accepted: int, offered: int):
        self.accepted, self.offered = accepted, offered
        super().__init__(f"{device}: driver accepted features {accepted:#x} not offered "
                         f"(offered {offered:#x}, extra {accepted & ~offered:#x}) (2.2.1)")


class ConfigAccessOutOfRange(GuestFault):
    def __init__(self, device: str, offset: int, length: int, size: int):
        self.offset, self.length, self.size = offset, length, size
        super().__init__(f"{device}: config access {offset:#x}+{length:#x} is outside the "
                         f"{size:#x}-byte device configuration space (2.5)")


class WrongDirectionBuffers(GuestFault):
    def __init__(self, device: str, queue: str, head: int, want: str):
        self.head = head
        super().__init__(f"{device}: chain {head:#x} on {queue} has {want} buffers; this queue "
                         f"takes only the other direction (2.7.4)")


class QueueRingBroken(GuestFault):
    """The ring itself is broken (not one chain): the queue stops until a reset."""

    def __init__(self, device: str, queue: str, cause: VirtqueueError):
        super().__init__(f"{device}: {queue} stopped until reset: {cause}")


class QueueSetupError(DeviceError):
    """The transport set up a queue wrongly (a launcher bug, not a guest fault)."""


# -- protocols --------------------------------------------------------------------------------

class Trigger(Protocol):
    """The device's notifications to the driver; the transport/hypervisor supplies it."""

    def trigger(self, queue_index: int) -> None:
        """A used-buffer notification for one queue."""

    def config_changed(self) -> None:
        """A configuration change notification (also how DEVICE_NEEDS_RESET is announced, 2.1.2)."""


class Runner(Protocol):
    """Runs a device's queues (launcher.io.service.QueueWorkers)."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def close(self) -> None: ...
    def describe(self, index: int) -> str: ...


class NullTrigger:
    def trigger(self, queue_index: int) -> None:
        pass

    def config_changed(self) -> None:
        pass


@dataclasses.dataclass
class DeviceMetrics:
    """Per-device counters; tests assert on their deltas."""
    guest_faults: int = 0
    status_refused: int = 0
    chains: int = 0
    interrupts: int = 0
    resets: int = 0
    host_errors: int = 0

    def snapshot(self) -> dict[str, int]:
        return dataclasses.asdict(self)


# -- buffer helpers ---------------------------------------------------------------------------

def split_views(views: Iterable[memoryview], nbytes: int) -> tuple[list[memoryview], list[memoryview]]:
    """Split a scatter list after its first nbytes bytes (headers need not sit in their own
    descriptor: 2.6.4 Message Framing)."""
    head, tail = [], []
    for view in views:
        if nbytes >= len(view):
            head.append(view)
            nbytes -= len(view)
        elif nbytes > 0:
            head.append(view[:nbytes])
            tail.append(view[nbytes:])
            nbytes = 0
        else:
            tail.append(view)
    return [v for v in head if len(v)], [v for v in tail if len(v)]


def gather(views: Iterable[memoryview], nbytes: int) -> bytes:
    """Copy the first nbytes of a scatter list (the guest may change them under us)."""
    return b"".join(bytes(v) for v in split_views(views, nbytes)[0])


def total_len(views: Iterable[memoryview]) -> int:
    return sum(len(v) for v in views)


# -- the device -------------------------------------------------------------------------------

@dataclasses.dataclass
class QueueSlot:
    """One virtqueue as the transport configured it, and the engine once activated."""
    name: str
    max_size: int
    size: int = 0
    desc_addr: int = 0
    avail_addr: int = 0
    used_addr: int = 0
    vq: SplitVirtqueue | None = None
    held: Chain | None = None       # popped, waiting for host input (rx queues)
    broken: bool = False


class VirtioDevice:
    """Base of every device.  Subclasses set device_id and QUEUES and implement serve()."""

    device_id: DeviceId
    name = "virtio"
    QUEUES: tuple[str, ...] = ()
    QUEUE_SIZE = 256        # the original's VIRTQUEUE_NUM

    def __init__(self, *, offered: int = 0, config: bytes = b"", strict: bool = False,
                 legacy: bool = False, queue_size: int | None = None):
        self.offered = offered
        self.accepted = 0
        self.config = bytearray(config)
        self.strict = strict
        self.legacy = legacy
        self.status = 0
        self.metrics = DeviceMetrics()
        self.trigger: Trigger = NullTrigger()
        self.runner: Runner | None = None
        self.active = False
        self.memory: GuestMemory | None = None
        size = queue_size or self.QUEUE_SIZE
        self.queues = [QueueSlot(name, size) for name in self.QUEUES]
        self._lock = threading.RLock()   # status/activation vs. the service threads
        self.log = logging.getLogger(f"launcher.devices.{self.name}")

    # -- guest faults ---------------------------------------------------------------------------
    def guest_fault(self, fault: GuestFault) -> None:
        """Count and log a guest mistake; strict mode raises it instead."""
        self.metrics.guest_faults += 1
        # Format now: a log record that kept `fault` would keep its traceback's frames, and
        # with them views of guest memory, alive after the request.
        self.log.warning("guest fault: %s", str(fault))
        if self.strict:
            raise fault

    # -- features (2.2) -----------------------------------------------------------------------
    def has_feature(self, bit: int) -> bool:
        return bool(self.accepted >> bit & 1)

    def accept_features(self, accepted: int) -> bool:
        """The driver's feature choice; refused (False) when it names a bit we never offered."""
        if accepted & ~self.offered:
            self.guest_fault(FeaturesNotOffered(self.name, accepted, self.offered))
            return False
        self.accepted = accepted
        return True

    # -- config space (2.5) -------------------------------------------------------------------
    def read_config(self, offset: int, length: int) -> bytes:
        if not self._config_range_ok(offset, length):
            return bytes(length if length > 0 else 0)
        return bytes(self.config[offset:offset + length])

    def write_config(self, offset: int, data: bytes) -> None:
        if self._config_range_ok(offset, len(data)):
            self.config_write(offset, bytes(data))

    def config_write(self, offset: int, data: bytes) -> None:
        """Hook for a driver write inside config space; the default keeps config read-only."""
        self.log.info("ignoring driver write of %d bytes at config offset %#x", len(data), offset)

    def _config_range_ok(self, offset: int, length: int) -> bool:
        if offset < 0 or length < 0 or offset + length > len(self.config):
            self.guest_fault(ConfigAccessOutOfRange(self.name, offset, length, len(self.config)))
            return False
        return True

    # -- status life cycle (2.1, 3.1) ---------------------------------------------------------
    def set_status(self, new: int) -> bool:
        """A driver write of the status field.  Returns whether it took effect; a refused
        write leaves the status as it was (the driver reads it back and sees so)."""
        with self._lock:
            new &= ~DeviceStatus.DEVICE_NEEDS_RESET & 0xFF   # device-owned bit, 2.1.2
            old = self.status & ~DeviceStatus.DEVICE_NEEDS_RESET
            if new == 0:
                self.reset()
                return True
            if not status_transition_allowed(old, new, self.legacy):
                self.metrics.status_refused += 1
                self.guest_fault(StatusTransitionRefused(self.name, old, new))
                return False
            gained = new & ~old
            if gained & DeviceStatus.FEATURES_OK and not self._features_ok():
                self.metrics.status_refused += 1
                return False
            if self.legacy and gained & DeviceStatus.DRIVER_OK and not self._features_ok():
                self.metrics.status_refused += 1
                return False
            self.status = new | (self.status & DeviceStatus.DEVICE_NEEDS_RESET)
            if gained & DeviceStatus.FAILED:
                self.log.warning("driver set FAILED (status %#04x)", new)
                self.deactivate()
            elif gained & DeviceStatus.DRIVER_OK:
                self.activate()
            return True

    def _features_ok(self) -> bool:
        """2.2.2: the device refuses FEATURES_OK for a subset it cannot work with."""
        if self.accepted & ~self.offered:
            self.guest_fault(FeaturesNotOffered(self.name, self.accepted, self.offered))
            return False
        return True

    def reset(self) -> None:
        """Status 0 (2.4): stop the service threads, drop the queues and the accepted features."""
        with self._lock:
            self.deactivate()
            for slot in self.queues:
                slot.size = slot.desc_addr = slot.avail_addr = slot.used_addr = 0
            self.status = 0
            self.accepted = 0
            self.metrics.resets += 1
            self.on_reset()

    # -- queues -------------------------------------------------------------------------------
    def set_queue(self, index: int, size: int, desc_addr: int, avail_addr: int, used_addr: int) -> None:
        """Where the driver put queue `index` (split layout, 2.7)."""
        with self._lock:
            slot = self._slot(index)
            if self.active:
                raise QueueSetupError(f"{self.name}: {slot.name} set up while the device is live")
            if not 0 < size <= slot.max_size:
                raise QueueSetupError(f"{self.name}: {slot.name} size {size:#x} outside 1..{slot.max_size:#x}")
            slot.size, slot.desc_addr, slot.avail_addr, slot.used_addr = size, desc_addr, avail_addr, used_addr

    def set_queue_legacy(self, index: int, size: int, base_addr: int, align: int = 4096) -> None:
        """The legacy single-area layout (2.7.2), as lguest and legacy PCI use."""
        self.set_queue(index, size, *legacy_layout(size, base_addr, align))

    def _slot(self, index: int) -> QueueSlot:
        if not 0 <= index < len(self.queues):
            raise QueueSetupError(f"{self.name} has no queue {index} (it has {len(self.queues)})")
        return self.queues[index]

    def activate(self, memory: GuestMemory | None = None) -> None:
        """Build the queue engines and start the runner (DRIVER_OK, or an lguest guest that
        kicks a queue before DRIVER_OK, as the original allowed)."""
        with self._lock:
            if self.active:
                return
            self.memory = memory or self.memory
            if self.memory is None:
                raise QueueSetupError(f"{self.name}: activated without guest memory")
            try:
                for slot in self.queues:
                    if slot.size:
                        slot.vq = self._make_queue(slot)
            except VirtqueueError as err:
                self._drop_queues()
                self._needs_reset()
                self.guest_fault(QueueRingBroken(self.name, "queue setup", err))
                return
            self.active = True
            self.on_activate()
            if self.runner is not None:
                self.runner.start()

    def _make_queue(self, slot: QueueSlot) -> SplitVirtqueue:
        return SplitVirtqueue(self.memory, slot.size, slot.desc_addr, slot.avail_addr, slot.used_addr,
                              event_idx=self.has_feature(VIRTIO_RING_F_EVENT_IDX),
                              notify_on_empty=self.has_feature(VIRTIO_F_NOTIFY_ON_EMPTY))

    def deactivate(self) -> None:
        """Stop the service threads (joined), then drop the engines and any held chain."""
        with self._lock:
            if self.runner is not None:
                self.runner.stop()
            self.active = False
            self._drop_queues()

    def _drop_queues(self) -> None:
        for slot in self.queues:
            if slot.vq is not None:
                slot.vq.close()
            if slot.held is not None:
                slot.held.release()
            slot.vq, slot.held, slot.broken = None, None, False

    def close(self) -> None:
        """The device is going away: stop and close the runner, then the backend."""
        self.deactivate()
        if self.runner is not None:
            self.runner.close()
        self.close_backend()

    # -- queue processing -----------------------------------------------------------------------
    def process(self, index: int) -> bool:
        """Serve every chain the driver has made available on queue `index`.

        Returns whether the used-buffer notification is due (2.7.7.2); the caller raises it.
        Pure in (guest memory, queue, backend): no threads, safe to call from a test.
        """
        slot = self._slot(index)
        vq = slot.vq
        if vq is None or slot.broken:
            return False
        serve = self.handler(index)
        while self.ready_for_chain(index):
            if slot.held is not None:
                chain, slot.held = slot.held, None
            else:
                chain = self._pop(slot)
                if chain is None:
                    # The ring looks empty.  Before the caller sleeps until a kick: ask for
                    # one, fence, and look again; the driver may have published after our
                    # last look and decided against kicking (2.7.10).
                    if slot.broken or not self._rearm(slot):
                        break
                    continue
                if chain is _SKIPPED:
                    continue
            if self._serve(slot, serve, chain) is _HELD:
                slot.held = chain
                break
        return self._needs_interrupt(slot)

    def _pop(self, slot: QueueSlot):
        """The next chain, None when there is none (or the ring broke), _SKIPPED when the
        chain was broken and has been completed empty."""
        try:
            return slot.vq.pop()
        except ChainError as err:
            # pop() consumed it: complete it empty so the driver gets its buffers back.
            self._complete(slot, err.head, 0)
            self.guest_fault(_chain_fault(self.name, slot.name, err))
            return _SKIPPED
        except VirtqueueError as err:
            self._break(slot, err)
            return None

    def _rearm(self, slot: QueueSlot) -> bool:
        """Re-enable kicks and re-check the avail ring; True when a chain slipped in."""
        try:
            return slot.vq.enable_notifications()
        except VirtqueueError as err:
            self._break(slot, err)
            return False

    def _serve(self, slot: QueueSlot, serve, chain: Chain):
        try:
            written = serve(chain)
        except GuestFault as fault:
            self._complete(slot, chain.head, fault.written, chain)
            self.guest_fault(fault)
            return None
        if written is None:
            return _HELD
        self._complete(slot, chain.head, written, chain)
        return None

    def _complete(self, slot: QueueSlot, head: int, written: int, chain: Chain | None = None) -> None:
        if chain is not None:
            chain.release()     # no view of guest memory outlives the request
        slot.vq.push(head, written)
        self.metrics.chains += 1

    def _break(self, slot: QueueSlot, err: VirtqueueError) -> None:
        slot.broken = True
        self._needs_reset()
        self.guest_fault(QueueRingBroken(self.name, slot.name, err))

    def _needs_reset(self) -> None:
        """2.1.2: a device that sets DEVICE_NEEDS_RESET MUST send a configuration change
        notification (the driver then reads the status and resets the device)."""
        self.status |= DeviceStatus.DEVICE_NEEDS_RESET
        self.trigger.config_changed()

    def _needs_interrupt(self, slot: QueueSlot) -> bool:
        if slot.vq is None:
            return False
        try:
            due = slot.vq.needs_interrupt()
        except VirtqueueError as err:
            self._break(slot, err)
            return True
        if due:
            self.metrics.interrupts += 1
        return due

    def has_work(self, index: int) -> bool:
        """Whether process(index) would find a chain (or a held one) now."""
        slot = self._slot(index)
        if slot.vq is None or slot.broken:
            return False
        if slot.held is not None:
            return True
        try:
            return slot.vq.has_available()
        except VirtqueueError as err:
            self._break(slot, err)
            return False

    # -- subclass hooks -------------------------------------------------------------------------
    def handler(self, index: int) -> Callable[[Chain], int | None]:
        """The function serving one chain of queue `index`: returns the used length, or None
        to hold the chain until host input arrives.  Raises GuestFault for guest mistakes."""
        raise NotImplementedError

    def ready_for_chain(self, index: int) -> bool:
        """Whether to take a chain now; rx queues wait for host input."""
        return True

    def input_fd(self, index: int) -> int | None:
        """A host fd that becomes readable when queue `index` has input to deliver."""
        return None

    def on_activate(self) -> None:
        pass

    def on_reset(self) -> None:
        pass

    def close_backend(self) -> None:
        pass

    def describe_state(self) -> list[str]:
        """Status, features and every queue's indices and service thread: a state dump's lines."""
        lines = [f"{self.name}: status {self.status:#04x}, features {self.accepted:#x} of {self.offered:#x}, "
                 f"{'active' if self.active else 'inactive'}"]
        for index, slot in enumerate(self.queues):
            if slot.vq is None:
                lines.append(f"  {slot.name}: not set up")
                continue
            extra = (", broken" if slot.broken else "") + (", a chain held for host input" if slot.held else "")
            runner = self.runner.describe(index) if self.runner is not None else "no service thread"
            lines.append(f"  {slot.name} (size {slot.size}{extra}; {runner}): {slot.vq.describe()}")
        return lines

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(status={self.status:#04x}, offered={self.offered:#x}, "
                f"accepted={self.accepted:#x}, active={self.active})")


_SKIPPED = object()     # a broken chain, already completed empty
_HELD = object()        # a chain kept for host input that has not arrived yet


def _chain_fault(device: str, queue: str, err: ChainError) -> GuestFault:
    fault = GuestFault(f"{device}: {queue}: {err}")
    fault.__cause__ = err
    return fault
