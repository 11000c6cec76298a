"""The device bus a hypervisor backend declares: how its guests find their devices.

A backend class names its bus (Backend.bus); the life cycle (launcher.launcher) asks the
bus, never the backend's name, how much guest memory it needs, which devices it carries,
what the kernel command line must say about them and who claims a guest notification:

    size = Bus.memory_size(ram_size)                       # RAM, plus room the bus keeps above it
    specs = Bus.device_specs(extra_specs, hvc)             # the console first, where the bus has one
    bus = Bus.place(backend, memory, devices, ram_size=..., specs=..., report=..., early_console=...)
    bus.add_to_cmdline(cmdline); bus.check_kernel_end(result.end); bus.before_initialize()
    bus.notify(addr, value)                                # each notification the backend returns
    bus.close()                                            # the bus's own fds; devices are the caller's

Implementations: launcher.transports.lguest_bus (the device page above RAM) and
launcher.hypervisor.kvm_virtio (virtio-mmio with KVM ioeventfd/irqfd).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar, Protocol


def _quiet(text: str) -> None:
    pass


@dataclasses.dataclass(frozen=True)
class Report:
    """Where the launcher's words go: `say` only under --verbose, `tell` always (warnings,
    and what a user must know, like the pty hvc0 is on)."""
    say: Callable[[str], None] = _quiet
    tell: Callable[[str], None] = _quiet
    quiet = staticmethod(_quiet)


class DeviceBus(Protocol):
    console_is_virtio: ClassVar[bool]   # the guest's console is virtio console 0 (else the backend's UART)

    @classmethod
    def memory_size(cls, ram_size: int) -> int: ...

    @classmethod
    def device_specs(cls, extra: tuple, hvc: str | None) -> list: ...

    @classmethod
    def place(cls, backend, memory, devices: list, *, ram_size: int, specs: list, report: Report,
              early_console: Callable[[bytes], None], strict: bool = False) -> "DeviceBus": ...

    def add_to_cmdline(self, cmdline) -> None: ...

    def check_kernel_end(self, end: int) -> None: ...

    def before_initialize(self) -> None: ...

    def notify(self, addr: int, value: int) -> None: ...

    def close(self) -> None: ...
