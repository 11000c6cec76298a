"""virtio-pci devices on the KVM backend: bus 0 behind ports 0xcf8/0xcfc, one function per device.

Device n (in command-line order) is the function in slot n + 1 (the host bridge is 00:00.0),
its BAR0 at BAR_BASE + n * BAR_SIZE in the 32-bit hole (RAM ends below 3 GiB, kvm.MAX_MEMORY,
and the e820 map lists RAM only, so Linux sees the hole free for PCI), its INTx pin A on ISA
line IRQS[n], written in INTERRUPT_LINE.  Linux without ACPI or an MP table routes INTx by
that register; with an MP table (--cpus > 1) by the entries intx_routes() gives it.

Fast paths as on virtio-mmio (launcher.hypervisor.kvm_virtio): each queue's notification
address (BAR + 0x3000 + 4n, 2 bytes) has an ioeventfd with datamatch on the queue index,
signalling the queue's service thread; each function has an irqfd on its line.  The BAR
decodes only while the guest has memory space enabled, so the MMIO range and the ioeventfds
follow it: attached when the driver enables the function, detached and re-attached when it
sizes or moves the BAR.  A BAR placed over RAM or another range is not decoded (a named rule).
"""
from __future__ import annotations

import dataclasses
import os

from launcher.hypervisor.errors import BusConflict, IoctlFailed
from launcher.hypervisor.kvm_virtio import IRQS, KvmVirtioBus, line_interrupt
from launcher.errors import TransportError
from launcher.transports.bus import Report
from launcher.transports.pci import BAR_SIZE, VirtioPciTransport
from launcher.transports.pci_host import CONFIG_ADDRESS_PORT, CONFIG_PORTS, IntxRoute, PciHost

BAR_BASE = 0xE0000000
NOTIFY_WIDTH = 2                # vp_notify writes the 16-bit queue index


class TooManyPciDevices(TransportError):
    def __init__(self, count: int):
        super().__init__(f"{count} virtio-pci devices, but only {len(IRQS)} free ISA interrupt lines "
                         f"({', '.join(map(str, IRQS))}) for their INTx pins")


@dataclasses.dataclass
class PciSlot:
    transport: VirtioPciTransport
    slot: int
    irq: int
    irq_fd: int | None
    kicks: list = dataclasses.field(default_factory=list)   # (address, eventfd, queue) attached to KVM

    @property
    def fast_notify(self) -> bool:
        return bool(self.kicks)

    @property
    def device(self):
        return self.transport.device


class KvmVirtioPci(KvmVirtioBus):
    """Puts `devices` on `backend` (a KvmBackend) as virtio-pci functions."""

    def __init__(self, backend, memory, devices: list, *, strict: bool = False, event_idx: bool = True,
                 report: Report = Report()):
        if len(devices) > len(IRQS):
            raise TooManyPciDevices(len(devices))
        self.backend, self.memory, self.report = backend, memory, report
        self.host = PciHost(strict=strict)
        self.slots: list[PciSlot] = []
        try:
            for n, device in enumerate(devices):
                irq = IRQS[n]
                irq_fd, interrupt = line_interrupt(backend, irq)
                entry = PciSlot(None, 0, irq, irq_fd)
                self.slots.append(entry)
                address = BAR_BASE + n * BAR_SIZE
                entry.transport = VirtioPciTransport(
                    device, memory, bar_address=address, irq=irq, interrupt=interrupt, strict=strict,
                    event_idx=event_idx, name=f"{device.name}@pci", on_remap=lambda old, new, e=entry: self._remap(e, old, new))
                entry.slot = self.host.add(entry.transport)
                entry.transport.name = f"{device.name}@00:{entry.slot:02x}.0"
            backend.ports.register(CONFIG_ADDRESS_PORT, CONFIG_PORTS, self.host)
        except BaseException:
            self._close_fds()
            raise

    def _notify_fds(self, entry: PciSlot):
        runner = entry.device.runner
        if runner is None or not hasattr(runner, "eventfd"):
            return []
        return [(entry.transport.notify_address(i), runner.eventfd(i), i) for i in range(len(entry.device.queues))]

    def _remap(self, entry: PciSlot, old: int | None, new: int | None) -> None:
        """The BAR stopped decoding at old / starts at new: move the MMIO range and ioeventfds."""
        if old is not None:
            self.backend.mmio.unregister(old)
            for address, fd, index in entry.kicks:
                self.backend.attach_eventfd(address, fd, length=NOTIFY_WIDTH, datamatch=index, detach=True)
            entry.kicks.clear()
        if new is None:
            return
        if new < self.memory.size:
            entry.transport.refuse_mapping(new, f"overlaps guest RAM (0..{self.memory.size:#x})")
            return
        try:
            self.backend.mmio.register(new, BAR_SIZE, entry.transport)
        except BusConflict as err:
            entry.transport.refuse_mapping(new, str(err))
            return
        for offset, fd, index in self._notify_fds(entry):
            try:
                self.backend.attach_eventfd(new + offset, fd, length=NOTIFY_WIDTH, datamatch=index)
            except IoctlFailed as err:      # KVM refuses the address: kicks take the exit loop
                self.report.say(f"{entry.transport.name}: queue {index} kicks through the exit loop: {err}")
                continue
            entry.kicks.append((new + offset, fd, index))

    # -- the device bus --------------------------------------------------------------------------
    def add_to_cmdline(self, cmdline) -> None:
        """Nothing: the guest finds the functions by scanning bus 0."""

    def before_initialize(self) -> None:
        """With an MP table (--cpus > 1) Linux routes INTx by the table's entries, not INTERRUPT_LINE."""
        self.backend.pci_routes = tuple(self.intx_routes())

    def intx_routes(self) -> list[IntxRoute]:
        """(slot, pin, line) per function, for an MP table's I/O interrupt entries on the PCI bus."""
        return [IntxRoute(entry.slot, 1, entry.irq) for entry in self.slots]

    def describe(self) -> list[str]:
        return [f"{entry.device.name}: virtio-pci 00:{entry.slot:02x}.0, BAR0 at "
                f"{entry.transport.config.bar64_address(0):#x}, INTx on irq {entry.irq}"
                + (" (irqfd, ioeventfd kicks once the driver enables it)" if entry.irq_fd is not None
                   else " (KVM_IRQ_LINE)")
                for entry in self.slots]

    def close(self) -> None:
        self._close_fds()

    def _close_fds(self) -> None:
        for entry in self.slots:
            if entry.irq_fd is not None:
                os.close(entry.irq_fd)
                entry.irq_fd = None
