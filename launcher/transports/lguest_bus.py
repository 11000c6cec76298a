"""The lguest bus as a whole: devices on the device page above RAM, and the guest's NOTIFYs.

Guest memory is lguest's: RAM from 0, then (above RAM, outside the e820 map) the device page
and each queue's vring at pfn * 4096 (launcher.transports.lguest_page lays them out).  A NOTIFY
is handled as the 2.6.39 Launcher's handle_output did: the device page address of a device is
a status change, a queue's address starts that device (its service threads, with an eventfd
attached to every queue address so later kicks skip us), anything else inside the guest is an
early-console string, and an address outside it is refused (BadNotify).

It reaches the backend only through raise_interrupt, attach_eventfd and set_guest_limit.
"""
from __future__ import annotations

from typing import Callable

from launcher.devices.base import DeviceStatus
from launcher.devspec import BlockSpec, ConsoleSpec, NetSpec
from launcher.errors import HypervisorError, LoaderError
from launcher.memory import GuestMemory
from launcher.transports.bus import Report
from launcher.transports.lguest_page import (
    DEVICE_PAGES, LGUEST_PAGE_SIZE, DeviceRegion, LguestDevicePage, LguestEntry,
)


class BadNotify(HypervisorError):
    def __init__(self, addr: int, limit: int):
        super().__init__(f"bad NOTIFY {addr:#x}: not a device's address and outside the guest "
                         f"(0..{limit:#x})")


class KernelOverlapsDevices(LoaderError):
    def __init__(self, end: int, ram: int):
        super().__init__(f"the kernel ends at {end:#x}, past the end of guest RAM {ram:#x} where the "
                         f"lguest device pages start; give the guest more memory")


class LguestBus:
    """`devices` (console first) on the device page, in front of an lguest backend."""

    console_is_virtio = True

    @classmethod
    def memory_size(cls, ram_size: int) -> int:
        """RAM plus the original's DEVICE_PAGES above it for the device page and vrings."""
        return ram_size + DEVICE_PAGES * LGUEST_PAGE_SIZE

    @classmethod
    def device_specs(cls, extra: tuple, hvc: str | None = None) -> list:
        """The console is always device 1: it is the guest's only console (hvc does not apply)."""
        return [ConsoleSpec(), *extra]

    @classmethod
    def place(cls, backend, memory: GuestMemory, devices: list, *, ram_size: int, specs: list,
              report: Report = Report(), early_console: Callable[[bytes], None] = lambda data: None,
              strict: bool = False) -> "LguestBus":
        bus = cls(backend, memory, devices, ram_size=ram_size, report=report, early_console=early_console)
        for number, (device, spec) in enumerate(zip(devices, specs), 1):
            entry = bus.page.add(device)
            for queue in entry.queues:
                report.say(f"Virtqueue page {queue.addr:#x}")
            report.say(f"device {number}: {_label(spec, device)}")
        return bus

    def __init__(self, backend, memory: GuestMemory, devices: list, *, ram_size: int,
                 report: Report = Report(), early_console: Callable[[bytes], None] = lambda data: None):
        self.backend, self.memory, self.devices, self.ram_size = backend, memory, devices, ram_size
        self.report, self.early_console = report, early_console
        self.page = LguestDevicePage(memory, DeviceRegion(ram_size, memory.size), backend.raise_interrupt)
        self._attached: set[int] = set()     # id() of devices whose queues have eventfds

    @property
    def guest_limit(self) -> int:
        """RAM plus the device pages in use: what the guest may touch (the original's guest_limit)."""
        return self.page.region.next

    # -- before the guest runs ------------------------------------------------------------------
    def add_to_cmdline(self, cmdline) -> None:
        """The guest finds lguest devices by the page's address; the command line says nothing."""

    def check_kernel_end(self, end: int) -> None:
        if end > self.ram_size:
            raise KernelOverlapsDevices(end, self.ram_size)

    def before_initialize(self) -> None:
        limit = self.guest_limit
        self.backend.set_guest_limit(limit)
        base = self.memory.host_address
        self.report.say(f"Guest: {base:#x} - {base + limit:#x} ({limit:#x})")

    # -- NOTIFY ---------------------------------------------------------------------------------
    def notify(self, addr: int, value: int = 0) -> None:
        self.report.say(f"Notify on address {addr:#x}")
        before = {id(d) for d in self.devices if d.active}
        self._sync_features_before_kick(addr)
        if self.page.notify(addr):
            self._after_device_notify(before)
            return
        limit = self.guest_limit
        if not 0 <= addr < limit:
            raise BadNotify(addr, limit)
        # Early console: a NUL-terminated string, never read past the guest's end.
        length = self.memory.strnlen(addr, limit - addr)
        self.early_console(self.memory.read(addr, length))

    def _sync_features_before_kick(self, addr: int) -> None:
        """A kick may start a device before DRIVER_OK; the original's start_device then read
        the accepted features straight from the page, so the device must see them too."""
        for entry in self.page.entries:
            device = entry.device
            if device.active or not any(addr == q.addr for q in entry.queues):
                continue
            raw = self.memory.read(entry.accepted_addr, entry.feature_len)
            accepted = int.from_bytes(raw, "little")
            if accepted != device.accepted:
                device.accept_features(accepted)

    def _after_device_notify(self, before: set[int]) -> None:
        for entry in self.page.entries:
            device = entry.device
            if device.active and id(device) not in before:
                self._device_started(entry)
            elif not device.active and id(device) in before:
                if device.status & DeviceStatus.FAILED:
                    self.report.tell(f"Device {device.name} configuration FAILED")
                self.report.say(f"Resetting device {device.name}")

    def _device_started(self, entry: LguestEntry) -> None:
        """start_device: say what was negotiated, then route the queues' kicks to their
        service threads (LHREQ_EVENTFD), once per device: the eventfds outlive resets."""
        device = entry.device
        flen = entry.feature_len
        offered = "".join(f" {b:02x}" for b in device.offered.to_bytes(flen, "little"))
        accepted = "".join(f" {b:02x}" for b in device.accepted.to_bytes(flen, "little"))
        self.report.say(f"Device {device.name} OK: offered{offered}, accepted{accepted}")
        runner = device.runner
        if runner is None or not hasattr(runner, "eventfd") or id(device) in self._attached:
            return
        for index, queue in enumerate(entry.queues):
            self.backend.attach_eventfd(queue.addr, runner.eventfd(index))
        self._attached.add(id(device))

    def close(self) -> None:
        """Nothing of its own to release: the devices are the life cycle's."""


def _label(spec, device) -> str:
    """The original's "device N: ..." wording."""
    if isinstance(spec, NetSpec):
        tap = getattr(device.backend, "name", "?")
        return f"tun {tap} attached to bridge: {spec.bridge}" if spec.bridge else f"tun {tap}: {spec.interface}"
    if isinstance(spec, BlockSpec):
        return f"virtblock {device.capacity} sectors" + (" (read-only)" if spec.read_only else "")
    return spec.describe()
