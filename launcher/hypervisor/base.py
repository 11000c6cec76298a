"""The hypervisor backend interface: the few operations the Launcher needs.

A backend runs one guest.  The life cycle (launcher.launcher.Launcher) drives it like this:

    backend = Backend(memory, console_out, ram_size=..., system_map=...)
    layout = backend.boot_layout()                 # where the zero page and cmdline go
    ... devices on backend.bus, load kernel/initrd, write boot params at layout addresses ...
    backend.initialize(BootSpec(entry=..., boot_params=layout.boot_params, kind=...))
    while isinstance(event := backend.run(deadline), Notify):
        ... the bus hands event.addr to the device that owns it ...
    status = event.outcome.exit_status

A backend class declares what the life cycle must know about it: `bus` (the device bus
class its guests probe, launcher.transports.bus.DeviceBus), `reboot` (RebootPolicy) and
`boots` (the kernel kinds it can start, which its BootLayout carries to the load step).
Implementations: kvm (this package), lguest, and the harness's fake.
"""
from __future__ import annotations

import abc
import enum
from dataclasses import dataclass, field
from typing import Callable, ClassVar

from launcher.hypervisor.errors import SnapshotUnsupported, TransportUnsupported
from launcher.loader import E820Entry, HardwareSubarch, KernelKind, LoadFlags


class Outcome(enum.Enum):
    """How a run ended; exit_status is what `lguest-harness boot` returns."""

    POWER_OFF = ("the guest powered off", 0)
    HALTED = ("the guest halted with interrupts off", 0)
    REBOOT = ("the guest asked for a reboot", 0)
    PANIC = ("the guest kernel panicked", 3)
    TIMEOUT = ("the run timed out", 4)
    EMULATION_FAILURE = ("the host could not emulate a guest instruction", 5)
    GUEST_CRASH = ("the guest crashed (triple fault, failed entry or internal error)", 6)
    INTERRUPTED = ("the launcher was interrupted", 130)
    PAUSED = ("the guest was paused", 0)             # request_stop(PAUSED): to take a snapshot

    def __init__(self, text: str, exit_status: int):
        self.text = text
        self.exit_status = exit_status


# Exit status for errors in the launcher's own input or setup (not the guest's doing).
EXIT_LAUNCHER_ERROR = 1


class RebootPolicy(enum.Enum):
    """What a guest's reboot request does once the run has ended and everything is closed."""

    END_RUN = "end the run (exit status 0)"
    REEXEC = "execute the launcher again with its original argv, as the 2.6.39 Launcher did"


@dataclass(frozen=True)
class Notify:
    """The guest notified an address (lguest NOTIFY, or an unclaimed MMIO write)."""

    addr: int
    value: int = 0


@dataclass(frozen=True)
class Stopped:
    """The guest is gone; detail is a readable explanation (may span lines)."""

    outcome: Outcome
    detail: str = ""


RunEvent = Notify | Stopped


@dataclass(frozen=True)
class BootLayout:
    """Where a backend wants the boot data, and what the zero page must say."""

    boot_params: int
    cmdline: int
    cmdline_capacity: int
    e820: tuple[E820Entry, ...]
    hardware_subarch: HardwareSubarch
    loadflags: LoadFlags
    version: int
    prefer_elf: bool            # extract the vmlinux from a bzImage instead of running its decompressor
    initrd_max_end: int | None  # the initrd must end below this (None: top of RAM)
    copy_setup_header: bool     # copy a bzImage's setup header into the zero page
    kernel_kinds: frozenset[KernelKind]     # the kinds of kernel this backend boots; the load step refuses others


@dataclass(frozen=True)
class BootSpec:
    entry: int
    boot_params: int
    kind: KernelKind


@dataclass(frozen=True)
class CmdlineAddition:
    """A kernel option the backend adds for this host, and why (shown under --verbose)."""

    option: str
    reason: str


class Backend(abc.ABC):
    """Constructed as cls(memory, console_out, *, ram_size=..., system_map=..., **options)."""

    name: str = "?"
    bus: ClassVar[type]                          # launcher.transports.bus.DeviceBus
    reboot: ClassVar[RebootPolicy] = RebootPolicy.END_RUN
    boots: ClassVar[frozenset[KernelKind]] = frozenset(KernelKind)   # every kind the loader produces
    max_cpus: ClassVar[int] = 1                  # more only where the constructor takes cpus=

    @classmethod
    def bus_for(cls, transport: str | None, kernel) -> type:
        """The device bus for --transport=transport (None: the backend's choice for kernel)."""
        if transport is not None:
            raise TransportUnsupported(f"--transport={transport}: the {cls.name} backend has one device bus "
                                       f"({cls.bus.__name__}); leave --transport out")
        return cls.bus

    @abc.abstractmethod
    def boot_layout(self) -> BootLayout:
        """Addresses and zero-page facts for this backend and memory size."""

    def cmdline_additions(self) -> list[CmdlineAddition]:
        """Kernel options this host needs (quirks); empty by default."""
        return []

    @abc.abstractmethod
    def initialize(self, boot: BootSpec) -> None:
        """Point the vCPU at the loaded kernel; memory already holds kernel and boot data."""

    @abc.abstractmethod
    def run(self, deadline: float | None = None) -> RunEvent:
        """Run until the next notification or the guest's end; deadline is time.monotonic()."""

    @abc.abstractmethod
    def raise_interrupt(self, irq: int) -> None:
        """Assert (edge) interrupt line `irq` in the guest."""

    @abc.abstractmethod
    def attach_eventfd(self, addr: int, fd: int, *, length: int = 4, datamatch: int | None = None) -> None:
        """Make guest writes to addr signal eventfd fd instead of returning a Notify."""

    @abc.abstractmethod
    def restart(self) -> None:
        """Drop all guest CPU and device state so initialize() can boot again (memory is the caller's)."""

    @abc.abstractmethod
    def send_console_input(self, data: bytes) -> int:
        """Queue host console input for the guest; returns bytes accepted. Thread-safe."""

    @abc.abstractmethod
    def request_stop(self, outcome: Outcome, detail: str = "") -> None:
        """From any thread: make run() return Stopped(outcome) promptly."""

    def describe_vcpus(self) -> list[str]:
        """Where each vCPU is, for a state dump; called on the thread that runs the vCPU,
        between two runs (a signal handler there)."""
        return []

    # -- snapshots (optional: a backend that cannot says so) -----------------------------------
    snapshots: ClassVar[bool] = False           # save_state/restore_state work

    def save_state(self) -> dict:
        """After run() returned Stopped(PAUSED): the guest CPU and in-kernel device state as
        plain data (JSON-able), with any exit the vCPU was handling completed first."""
        raise SnapshotUnsupported(f"the {self.name} backend cannot snapshot a guest")

    def restore_state(self, state: dict) -> None:
        """Instead of initialize(): continue a guest from save_state()'s data; guest memory
        already holds the snapshot's RAM."""
        raise SnapshotUnsupported(f"the {self.name} backend cannot restore a guest from a snapshot")

    def close(self) -> None:
        """Release fds and mappings; idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class RunStats:
    """What a backend measured about its runs (the boot benchmark reads it)."""

    exits: dict[str, int] = field(default_factory=dict)
    seconds_in_run: float = 0.0
    cpu_in_run: float = 0.0  # this thread's CPU time inside the hypervisor call (host emulation of guest code)

    def count(self, reason: str) -> None:
        self.exits[reason] = self.exits.get(reason, 0) + 1


ConsoleOut = Callable[[bytes], None]
