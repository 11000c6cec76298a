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

from launcher.errors import TransportError
from launcher.transports.mmio import MMIO_WINDOW, MmioReg, MmioTransport

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


class KvmVirtioMmio:
    """Puts `devices` on `backend` (a KvmBackend) as virtio-mmio devices.

    Uses the backend's mmio bus, attach_eventfd (KVM_IOEVENTFD) and attach_irqfd (KVM_IRQFD).
    Devices with a runner (launcher.io.service.QueueWorkers) get ioeventfd kicks; others are
    kicked through the exit loop.  close() closes the devices and the interrupt eventfds.
    """

    def __init__(self, backend, memory, devices: list, *, base: int = MMIO_BASE,
                 irqs: tuple[int, ...] = IRQS, strict: bool = False, event_idx: bool = True):
        if len(devices) > len(irqs):
            raise TooManyMmioDevices(len(devices))
        self.backend = backend
        self.slots: list[MmioSlot] = []
        use_irqfd = getattr(backend, "irqchip", False) and hasattr(backend, "attach_irqfd")
        try:
            for n, device in enumerate(devices):
                addr, irq = base + n * MMIO_STRIDE, irqs[n]
                irq_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK) if use_irqfd else None
                slot = MmioSlot(None, addr, irq, irq_fd, False)
                self.slots.append(slot)
                if irq_fd is not None:
                    backend.attach_irqfd(irq_fd, irq)
                    interrupt = _signal(irq_fd)
                else:
                    interrupt = (lambda line=irq: backend.raise_interrupt(line))
                slot.transport = MmioTransport(device, memory, interrupt=interrupt, strict=strict,
                                               event_idx=event_idx, name=f"{device.name}@{addr:#x}")
                backend.mmio.register(addr, MMIO_WINDOW, slot.transport)
                runner = device.runner
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

    # -- life cycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Stop every device's threads and close its backend, then the interrupt eventfds."""
        first: BaseException | None = None
        for slot in reversed(self.slots):
            if slot.transport is None:
                continue
            try:
                slot.transport.close()
            except Exception as err:  # noqa: BLE001 - close the rest, then report the first
                first = first or err
        self._close_fds()
        if first is not None:
            raise first

    def _close_fds(self) -> None:
        for slot in self.slots:
            if slot.irq_fd is not None:
                os.close(slot.irq_fd)
                slot.irq_fd = None


# -- `lguest-harness boot` on KVM ---------------------------------------------------------------

HVC_CHOICES = ("pty", "stdio", "none")


def attach_from_args(args, backend, memory, *, say: Callable[[str], None],
                     announce: Callable[[str], None]) -> KvmVirtioMmio | None:
    """The device flags (launcher.devspec) as virtio-mmio devices on a KVM backend.

    Nothing is added unless a device flag or --hvc=pty|stdio is given.  The virtio console
    (hvc0 in the guest) comes first, on a fresh pty (announced, so a user or test can open
    it) or on the launcher's stdio (--hvc=stdio; the 8250 then gets no input); --hvc=none
    leaves it out.
    """
    from launcher.devspec import ConsoleSpec, HostBackends, build_devices, device_specs, has_extra_devices

    specs = device_specs(args)
    hvc = getattr(args, "hvc", None)
    if not has_extra_devices(specs) and hvc in (None, "none"):
        return None
    if hvc == "none":
        specs = [spec for spec in specs if not isinstance(spec, ConsoleSpec)]
    devices = build_devices(specs, HostBackends(console=lambda: _console_backend(hvc or "pty", announce)))
    try:
        mmio = KvmVirtioMmio(backend, memory, devices)
    except BaseException:
        from launcher.devspec import close_devices
        close_devices(devices)
        raise
    for line in mmio.describe():
        say(line)
    return mmio


def _console_backend(kind: str, announce: Callable[[str], None]):
    from launcher.io.console_backends import PtyConsole, StdioConsole

    if kind == "stdio":
        return StdioConsole()
    console = PtyConsole()
    announce(f"virtio console (hvc0) on {console.peer_path}")
    return console
