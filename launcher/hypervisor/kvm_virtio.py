"""virtio-mmio devices on the KVM backend, with the kicks and interrupts kept out of Python's exit loop.

For device n (in command-line order) the guest gets a window of MMIO_WINDOW bytes at
MMIO_BASE + n * MMIO_STRIDE and interrupt line IRQS[n], announced on the kernel command line
as virtio_mmio.device=<size>@<base>:<irq> (CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES).  The window
sits in the 32-bit hole (RAM ends below 3 GiB, see kvm.MAX_MEMORY), well below the IOAPIC
(0xfec00000) and LAPIC (0xfee00000); the lines skip 0-2 (timer, keyboard, cascade), 4 (the
8250), 8 (RTC) and 13 (FPU).

Fast paths (KVM API, "KVM_IOEVENTFD" and "KVM_IRQFD"):
  - QueueNotify (base + 0x50, 4 bytes) has one ioeventfd per queue with datamatch on the
    queue index, signalling that queue's service-thread eventfd (launcher.io.service): a kick
    is a KVM-internal eventfd signal, never a KVM_EXIT_MMIO.
  - Each device has one irqfd on its line: the transport sets InterruptStatus, then writes
    the eventfd and KVM raises an edge on the in-kernel PIC/IOAPIC pin.  An edge is delivered
    once, so the transport signals again when an InterruptACK leaves bits pending.
Only register reads and writes (probe, status, features, queue set-up, InterruptStatus/ACK,
config space) take the exit loop, through the backend's MMIO bus.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Callable

from launcher.devices.snapshot import load_device, save_device, start_runner, stop_runner
from launcher.devspec import ConsoleSpec
from launcher.errors import TransportError
from launcher.hypervisor.errors import SnapshotUnsupported
from launcher.transports.bus import Report
from launcher.transports.mmio import MMIO_WINDOW, MmioReg, MmioTransport
from launcher.transports.mmio_snapshot import TransportStateMismatch, load_transport, save_transport

log = logging.getLogger(__name__)

MMIO_BASE = 0xD0000000
MMIO_STRIDE = 0x1000
IRQS = (5, 6, 7, 9, 10, 11, 12, 14, 15)


class TooManyMmioDevices(TransportError):
    def __init__(self, count: int):
        super().__init__(f"{count} virtio-mmio devices, but only {len(IRQS)} free ISA interrupt lines "
                         f"({', '.join(map(str, IRQS))})")


@dataclasses.dataclass
class MmioSlot:
    """One device as the guest finds it."""
    transport: MmioTransport
    base: int
    irq: int
    irq_fd: int | None          # None: no irqfd (no in-kernel irqchip), KVM_IRQ_LINE instead
    fast_notify: bool           # ioeventfds attached to QueueNotify

    @property
    def device(self):
        return self.transport.device

    @property
    def cmdline_value(self) -> str:
        return f"{MMIO_WINDOW:#x}@{self.base:#x}:{self.irq}"


def _signal(fd: int) -> Callable[[], None]:
    def interrupt() -> None:
        os.eventfd_write(fd, 1)
    return interrupt


def line_interrupt(backend, irq: int) -> tuple[int | None, Callable[[], None]]:
    """How a device raises ISA line irq: an irqfd where the backend has the in-kernel irqchip
    (its eventfd is returned for the caller to close), else KVM_IRQ_LINE from the caller's thread."""
    if not (getattr(backend, "irqchip", False) and hasattr(backend, "attach_irqfd")):
        return None, (lambda: backend.raise_interrupt(irq))
    fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    try:
        backend.attach_irqfd(fd, irq)
    except BaseException:
        os.close(fd)
        raise
    return fd, _signal(fd)


class KvmVirtioBus:
    """What the KVM device buses share (launcher.transports.bus): virtio-mmio here, virtio-pci
    in launcher.hypervisor.kvm_virtio_pci.  Subclasses take (backend, memory, devices, *,
    strict, report) and describe() their devices."""

    # -- the device bus (launcher.transports.bus) -----------------------------------------------
    console_is_virtio = False       # the guest's console is the backend's 8250; hvc0 is optional

    @classmethod
    def memory_size(cls, ram_size: int) -> int:
        return ram_size             # the devices sit in the 32-bit hole, above RAM

    @classmethod
    def device_specs(cls, extra: tuple, hvc: str | None = None) -> list:
        """Nothing unless a device or --hvc=pty|stdio is asked for; the virtio console (hvc0)
        first unless --hvc=none."""
        if not extra and hvc in (None, "none"):
            return []
        return [*([] if hvc == "none" else [ConsoleSpec()]), *extra]

    @classmethod
    def place(cls, backend, memory, devices: list, *, ram_size: int, specs: list,
              report: Report = Report(), early_console=None, strict: bool = False):
        bus = cls(backend, memory, devices, strict=strict, report=report)
        for line in bus.describe():
            report.say(line)
        return bus

    def check_kernel_end(self, end: int) -> None:
        """The loader already keeps the kernel inside RAM; the devices are above it."""

    def before_initialize(self) -> None:
        """KVM learned the ranges, ioeventfds and irqfds as they were placed."""

    def notify(self, addr: int, value: int = 0) -> None:
        self.report.say(f"ignoring a notification at {addr:#x}: no device claims it")


class KvmVirtioMmio(KvmVirtioBus):
    """Puts `devices` on `backend` (a KvmBackend) as virtio-mmio devices.

    Uses the backend's mmio bus, attach_eventfd (KVM_IOEVENTFD) and attach_irqfd (KVM_IRQFD).
    Devices with a runner (launcher.io.service.QueueWorkers) get ioeventfd kicks; others are
    kicked through the exit loop.  close() closes the interrupt eventfds (devices are the caller's).
    """

    def __init__(self, backend, memory, devices: list, *, base: int = MMIO_BASE,
                 irqs: tuple[int, ...] = IRQS, strict: bool = False, event_idx: bool = True,
                 report: Report = Report()):
        if len(devices) > len(irqs):
            raise TooManyMmioDevices(len(devices))
        self.backend = backend
        self.report = report
        self.slots: list[MmioSlot] = []
        try:
            for n, device in enumerate(devices):
                addr, irq = base + n * MMIO_STRIDE, irqs[n]
                irq_fd, interrupt = line_interrupt(backend, irq)
                slot = MmioSlot(None, addr, irq, irq_fd, False)
                self.slots.append(slot)
                slot.transport = MmioTransport(device, memory, interrupt=interrupt, strict=strict,
                                               event_idx=event_idx, name=f"{device.name}@{addr:#x}")
                backend.mmio.register(addr, MMIO_WINDOW, slot.transport)
                runner = device.runner
                if hasattr(runner, "use_call_fd"):
                    if irq_fd is None:
                        raise TransportError(f"{device.name}: a vhost-user device needs an in-kernel irqchip "
                                             f"(KVM irqfd) for its backend's interrupts")
                    runner.use_call_fd(irq_fd)
                if runner is not None and hasattr(runner, "eventfd"):
                    for index in range(len(device.queues)):
                        backend.attach_eventfd(addr + MmioReg.QUEUE_NOTIFY, runner.eventfd(index),
                                               length=4, datamatch=index)
                    slot.fast_notify = True
        except BaseException:
            self._close_fds()
            raise

    # -- the kernel command line --------------------------------------------------------------
    def cmdline_values(self) -> list[str]:
        """virtio_mmio.device= values, in device order (the guest numbers them in this order)."""
        return [slot.cmdline_value for slot in self.slots]

    def add_to_cmdline(self, cmdline) -> None:
        """Append virtio_mmio.device=... for every device to a launcher.loader.Cmdline."""
        for slot in self.slots:
            cmdline.add_virtio_mmio_device(MMIO_WINDOW, slot.base, slot.irq)

    def describe(self) -> list[str]:
        return [f"{slot.device.name}: virtio-mmio at {slot.base:#x}, irq {slot.irq}"
                + (" (irqfd" if slot.irq_fd is not None else " (KVM_IRQ_LINE")
                + (", ioeventfd kicks)" if slot.fast_notify else ", kicks through the exit loop)")
                for slot in self.slots]

    # -- snapshots ----------------------------------------------------------------------------------
    def save_state(self) -> list[dict]:
        """Each slot's window, line, register file and device, with every service thread joined
        first (each finishes the chain it serves), so no chain is half done."""
        for slot in self.slots:
            if getattr(slot.device, "external_queues", False):
                raise SnapshotUnsupported(f"{slot.device.name}: a vhost-user device's rings live in its backend "
                                          f"process, which cannot be saved; snapshot a guest without it")
        for slot in self.slots:
            stop_runner(slot.device)
        return [{"base": slot.base, "irq": slot.irq, "transport": save_transport(slot.transport),
                 "device": save_device(slot.device)} for slot in self.slots]

    def restore_state(self, states: list[dict]) -> None:
        """Give the freshly placed devices their saved state; nothing runs until resume()."""
        if len(states) != len(self.slots):
            raise TransportStateMismatch(f"the snapshot has {len(states)} virtio-mmio devices, "
                                         f"this guest {len(self.slots)}")
        for slot, state in zip(self.slots, states):
            if (state["base"], state["irq"]) != (slot.base, slot.irq):
                raise TransportStateMismatch(f"{slot.device.name}: saved at {state['base']:#x} irq {state['irq']}, "
                                             f"placed at {slot.base:#x} irq {slot.irq}")
            load_transport(slot.transport, state["transport"])
            load_device(slot.device, state["device"], slot.transport.memory)

    def resume(self) -> None:
        """Once the backend has its state (irqchip included): start the service threads, and
        signal again any interrupt the driver had not acknowledged (an irqfd edge in flight
        at the snapshot may never have reached the saved irqchip; an extra one is harmless)."""
        for slot in self.slots:
            start_runner(slot.device)
            if slot.transport.interrupt_status:
                slot.transport.interrupt()

    def close(self) -> None:
        """The interrupt eventfds; the devices (and their threads) are the life cycle's to close."""
        self._close_fds()

    def _close_fds(self) -> None:
        for slot in self.slots:
            if slot.irq_fd is not None:
                os.close(slot.irq_fd)
                slot.irq_fd = None
