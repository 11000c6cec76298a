"""The Launcher core on the lguest bus: lay out guest memory, load, tell the host, serve NOTIFYs.

Guest memory is lguest's: RAM from 0, then (above RAM, outside the e820 map) the device page
and each queue's vring at pfn * 4096.  The Launcher

    1. puts the devices on the lguest bus (launcher.transports.lguest_page), in order;
    2. loads the kernel and initrd through launcher.loader (which validates before writing)
       and writes the boot header the backend's BootLayout asks for;
    3. initialises the backend (LHREQ_INITIALIZE), then runs after_initialize (chroot, drop
       privileges: the original did both only once /dev/lguest was set up);
    4. runs the guest, handling each NOTIFY as the original's handle_output did: the device
       page address of a device is a status change, a queue's address starts that device
       (its service threads, with an eventfd attached to every queue address so later kicks
       skip us), anything else inside the guest is an early-console string, and an address
       outside it is refused (BadNotify).

It talks to the backend only through launcher.hypervisor.base's interface plus the lguest
backends' set_guest_limit; swapping backends touches the module that picks one.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from launcher.devices.base import DeviceStatus
from launcher.errors import HypervisorError, LoaderError
from launcher.hypervisor.base import BootSpec, Notify, Outcome, Stopped
from launcher.loader import BootParams, Cmdline, LoadResult, load_initrd, load_kernel_bytes
from launcher.memory import GuestMemory
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


def lguest_memory(ram_size: int) -> GuestMemory:
    """RAM plus the original's DEVICE_PAGES above it for the device page and vrings."""
    return GuestMemory(ram_size + DEVICE_PAGES * LGUEST_PAGE_SIZE)


@dataclasses.dataclass(frozen=True)
class BootFiles:
    kernel: bytes
    kernel_args: tuple[str, ...] = ()
    initrd: Path | None = None


def _quiet(text: str) -> None:
    pass


class Launcher:
    """One guest: `devices` (console first) on the lguest bus in front of `backend`."""

    def __init__(self, memory: GuestMemory, ram_size: int, backend, devices: list, *,
                 out: Callable[[bytes], None], say: Callable[[str], None] = _quiet,
                 after_initialize: Callable[[], None] = lambda: None, labels: list[str] | None = None,
                 warn: Callable[[str], None] | None = None):
        self.memory, self.ram_size, self.backend = memory, ram_size, backend
        self.devices = devices
        self.out, self.say = out, say
        self.warn = warn or say     # always shown by the CLI, as the original's warnx
        self.after_initialize = after_initialize
        self.labels = labels        # what --verbose calls each device (default: from the model)
        self.page: LguestDevicePage | None = None
        self._attached: set[int] = set()     # id() of devices whose queues have eventfds
        self.result: LoadResult | None = None

    # -- 1. devices --------------------------------------------------------------------------------
    def setup_devices(self) -> None:
        region = DeviceRegion(self.ram_size, self.memory.size)
        self.page = LguestDevicePage(self.memory, region, self.backend.raise_interrupt)
        for number, device in enumerate(self.devices, 1):
            entry = self.page.add(device)
            for queue in entry.queues:
                self.say(f"Virtqueue page {queue.addr:#x}")
            label = self.labels[number - 1] if self.labels else _describe(device)
            self.say(f"device {number}: {label}")

    @property
    def guest_limit(self) -> int:
        """RAM plus the device pages in use: what the guest may touch (the original's guest_limit)."""
        return self.page.region.next if self.page else self.ram_size

    # -- 2. kernel, initrd, boot header --------------------------------------------------------------
    def load(self, files: BootFiles) -> BootSpec:
        """Kernel, initrd, command line and zero page where the backend's BootLayout says."""
        layout = self.backend.boot_layout()
        self.say(f"Guest base is at {self.memory.host_address:#x}")
        result = load_kernel_bytes(self.memory, files.kernel, prefer_elf=layout.prefer_elf)
        if result.end > self.ram_size:
            raise KernelOverlapsDevices(result.end, self.ram_size)
        for number, seg in enumerate(result.segments):
            self.say(f"Section {number}: size {seg.memsz} addr {seg.paddr:#x}")
        ramdisk = self._load_initrd(files.initrd, result.end, layout.initrd_max_end)
        self._write_boot_header(layout, files.kernel_args, ramdisk)
        self.result = result
        return BootSpec(result.entry, layout.boot_params, result.kind)

    def _load_initrd(self, path: Path | None, kernel_end: int, max_end: int | None) -> tuple[int, int]:
        if path is None:
            return 0, 0
        placed = load_initrd(self.memory, path, kernel_end=kernel_end, max_end=max_end)
        self.say(f"mapped initrd {path} size={placed.size} @ {placed.addr:#x}")
        return placed.addr, placed.size

    def _write_boot_header(self, layout, kernel_args: tuple[str, ...], ramdisk: tuple[int, int]) -> None:
        """The zero page (single-region e820, lguest subarch, KEEP_SEGMENTS) and the
        command line after it, both validated before either is written."""
        cmdline = Cmdline(layout.cmdline_capacity)
        if kernel_args:
            cmdline.insert_str(" ".join(kernel_args))
        zero_page = BootParams(cmd_line_ptr=layout.cmdline, e820=layout.e820,
                               hardware_subarch=layout.hardware_subarch, loadflags=layout.loadflags,
                               version=layout.version, ramdisk_image=ramdisk[0],
                               ramdisk_size=ramdisk[1]).render()
        self.memory.write(layout.cmdline, cmdline.as_bytes())
        self.memory.write(layout.boot_params, zero_page)

    # -- 3. tell the host ------------------------------------------------------------------------------
    def initialize(self, boot: BootSpec) -> None:
        limit = self.guest_limit
        set_limit = getattr(self.backend, "set_guest_limit", None)
        if set_limit is not None:
            set_limit(limit)
        self.say(f"Guest: {self.memory.host_address:#x} - {self.memory.host_address + limit:#x} ({limit:#x})")
        self.backend.initialize(boot)
        self.after_initialize()

    # -- 4. run ------------------------------------------------------------------------------------------
    def run(self, deadline: float | None = None) -> Stopped:
        try:
            event = self.backend.run(deadline)
            while isinstance(event, Notify):
                self.say(f"Notify on address {event.addr:#x}")
                self.handle_notify(event.addr)
                event = self.backend.run(deadline)
        except KeyboardInterrupt:
            return Stopped(Outcome.INTERRUPTED, "SIGINT")
        return event

    def handle_notify(self, addr: int) -> None:
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
        self.out(self.memory.read(addr, length))

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
                    self.warn(f"Device {device.name} configuration FAILED")
                self.say(f"Resetting device {device.name}")

    def _device_started(self, entry: LguestEntry) -> None:
        """start_device: say what was negotiated, then route the queues' kicks to their
        service threads (LHREQ_EVENTFD), once per device: the eventfds outlive resets."""
        device = entry.device
        flen = entry.feature_len
        offered = "".join(f" {b:02x}" for b in device.offered.to_bytes(flen, "little"))
        accepted = "".join(f" {b:02x}" for b in device.accepted.to_bytes(flen, "little"))
        self.say(f"Device {device.name} OK: offered{offered}, accepted{accepted}")
        runner = device.runner
        if runner is None or not hasattr(runner, "eventfd") or id(device) in self._attached:
            return
        for index, queue in enumerate(entry.queues):
            self.backend.attach_eventfd(queue.addr, runner.eventfd(index))
        self._attached.add(id(device))


def _describe(device) -> str:
    """The original's per-device verbose line."""
    name = device.name
    if name == "block":
        return f"virtblock {device.capacity} sectors"
    if name == "net":
        tap = getattr(device.backend, "name", None)
        return f"tun {tap}" if tap else "net"
    return name
