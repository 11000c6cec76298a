"""One guest life cycle for every backend: the CLI, the Python API and the harness all use it.

    config = LaunchConfig(mem_mb=64, kernel=Path("vmlinux"), initrd=Path("initrd.cpio"))
    with Launcher(config, console_out=received.append) as vm:   # booted up to the first instruction
        vm.send_console_input(b"echo hi; poweroff -f\\n")
        stopped = vm.run()                                      # Stopped(outcome, detail)
    status = stopped.outcome.exit_status

The Launcher owns, in this order: guest memory (sized by the bus the backend declares) ->
the backend -> the devices, placed on that bus -> one load step (kernel, initrd, command
line with the backend's host quirks and the bus's devices, boot header) -> initialize ->
--chroot/--username -> the run loop (each notification the backend returns goes to the bus)
-> close, devices first, whatever failed.  A backend whose RebootPolicy is REEXEC (lguest)
re-executes the launcher once everything is closed, as the 2.6.39 Launcher did.

console_out=None means the launcher's own terminal: guest output to stdout, stdin to the
guest.  With a callable, the guest's console output goes to it and input comes only from
send_console_input().
"""
from __future__ import annotations

import dataclasses
import signal
import threading
import time
from typing import Callable

from launcher.config import LaunchConfig, UsageError
from launcher.consolewatch import MarkerClock
from launcher.devspec import HostBackends, build_devices, close_devices
from launcher.hostquirks import detect_host, smp_warning
from launcher.hypervisor import backend_class
from launcher.hypervisor.base import BootSpec, Notify, Outcome, RebootPolicy, RunStats, Stopped
from launcher.io.console import ConsoleInput, stdout_writer
from launcher.loader import (
    BootParams, Cmdline, KernelKind, LoadResult, kernel_kind, load_initrd, load_kernel_bytes, read_kernel,
)
from launcher.loader.errors import KernelKindUnsupported
from launcher.memory import GuestMemory
from launcher.privileges import drop_privileges
from launcher.reexec import Reexec
from launcher import snapshot as snapshots
from launcher.symbols import SystemMap
from launcher.transports.bus import Report


@dataclasses.dataclass(frozen=True)
class HostSide:
    """What the host gives a guest beyond its configuration; tests swap in doubles."""
    backends: HostBackends | None = None        # devices' host sides (default: the real ones)
    backend_options: dict = dataclasses.field(default_factory=dict)   # extra keyword arguments for the backend
    reexec: Reexec = Reexec()                   # how a REEXEC backend's reboot re-executes us
    strict: bool = False                        # transports raise on a broken rule instead of logging it


class Launcher:
    """One guest, from configuration to a closed, stopped guest."""

    def __init__(self, config: LaunchConfig, *, console_out: Callable[[bytes], None] | None = None,
                 report: Report = Report(), host: HostSide = HostSide(),
                 restore_from: snapshots.Snapshot | None = None):
        self.config, self.report, self.host = config, report, host
        self.restore_from = restore_from    # open() continues this snapshot instead of booting
        self.backend_class = backend_class(config.backend)
        self.bus_class = self.backend_class.bus_for(config.transport, config.kernel)
        self.on_terminal = console_out is None
        self._out = console_out or stdout_writer()
        self.started = time.monotonic()
        self.marker = MarkerClock(config.ready_marker, self.started)
        self.memory: GuestMemory | None = None
        self.backend = None
        self.devices: list = []
        self.bus = None
        self.console_device = None
        self.load_result: LoadResult | None = None
        self.cmdline: Cmdline | None = None
        self.hvc_path: str | None = None    # virtio-mmio: the pty hvc0 is on
        self._reboot_pending = False

    # -- the context manager: open on entry, close on exit, always --------------------------------
    def __enter__(self) -> "Launcher":
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:
            self._reboot_pending = False
        self.close()

    def open(self) -> None:
        """Everything up to the guest's first instruction (call close() even if this fails)."""
        if self.restore_from is not None:
            self._open_restored(self.restore_from)
            return
        kernel = read_kernel(self.config.kernel)
        system_map = self._system_map()
        self._open_memory()
        self._open_backend(system_map)
        self._place_devices()
        boot = self._load(kernel)
        self._initialize(boot)

    # -- 1. memory, backend, devices on the backend's bus ------------------------------------------
    def _open_memory(self) -> None:
        shared = bool(self.config.shares)
        self.memory = GuestMemory(self.bus_class.memory_size(self.config.ram_size), shared=shared)
        self.report.say(f"guest memory: {self.config.mem_mb} MiB at host {self.memory.host_address:#x}"
                        + (" (a shared memfd: vhost-user backends map it)" if shared else ""))

    def _open_backend(self, system_map: SystemMap | None) -> None:
        smp = {"cpus": self.config.cpus} if self.config.cpus > 1 else {}   # only backends with max_cpus > 1
        warning = smp and smp_warning(detect_host(), self.config.cpus)
        if warning:
            self.report.tell(warning)
        self.backend = self.backend_class(self.memory, self.console_out, ram_size=self.config.ram_size,
                                          system_map=system_map, **smp, **self.host.backend_options)

    def _place_devices(self) -> None:
        specs = self.bus_class.device_specs(self.config.devices, self.config.hvc)
        backends = self.host.backends or HostBackends(console=self._console_backend)
        self.devices = build_devices(specs, backends, strict=self.host.strict)
        self.bus = self.bus_class.place(self.backend, self.memory, self.devices, ram_size=self.config.ram_size,
                                        specs=specs, report=self.report, early_console=self.console_out,
                                        strict=self.host.strict)

    def _console_backend(self):
        """The virtio console's host side: the guest's console itself on a bus that has no
        UART, else hvc0 on a new pty (announced) or on the launcher's stdio."""
        from launcher.io.console_backends import CallbackConsole, PtyConsole, StdioConsole

        if self.bus_class.console_is_virtio:
            self.console_device = CallbackConsole(self.console_out, in_fd=0 if self.on_terminal else None)
            return self.console_device
        if self.config.hvc == "stdio":
            return StdioConsole()
        console = PtyConsole()
        self.hvc_path = console.peer_path
        self.report.tell(f"virtio console (hvc0) on {console.peer_path}")
        return console

    # -- 2. kernel, initrd, command line and boot header, in one place --------------------------------
    def _load(self, kernel: bytes) -> BootSpec:
        layout = self.backend.boot_layout()
        say = self.report.say
        self._check_kind(kernel_kind(kernel, prefer_elf=layout.prefer_elf), layout.kernel_kinds)
        result = load_kernel_bytes(self.memory, kernel, prefer_elf=layout.prefer_elf)
        self._check_kind(result.kind, layout.kernel_kinds)   # the headers may not have told (old bzImage)
        self.bus.check_kernel_end(result.end)
        say(f"kernel: {result.kind.value}" + (f", {result.compression} payload" if result.compression else "")
            + f", entry {result.entry:#x}")
        for seg in result.segments:
            say(f"  segment at {seg.paddr:#x}: {seg.filesz:#x} bytes from the file, {seg.memsz:#x} in memory")
        ramdisk = self._load_initrd(result.end, layout.initrd_max_end)
        cmdline = self._cmdline(layout.cmdline_capacity)
        zero_page = BootParams(
            cmd_line_ptr=layout.cmdline, e820=layout.e820, hardware_subarch=layout.hardware_subarch,
            loadflags=layout.loadflags, version=layout.version, ramdisk_image=ramdisk[0], ramdisk_size=ramdisk[1],
            setup_header=result.setup_header if layout.copy_setup_header else None).render()
        self.cmdline = cmdline
        self.memory.write(layout.cmdline, cmdline.as_bytes())
        self.memory.write(layout.boot_params, zero_page)
        for entry in layout.e820:
            say(f"e820: {entry.addr:#011x}-{entry.addr + entry.size - 1:#011x} {entry.type.name}")
        self.load_result = result
        return BootSpec(result.entry, layout.boot_params, result.kind)

    def _check_kind(self, kind: KernelKind | None, boots: frozenset[KernelKind]) -> None:
        """Refuse, before the guest runs, a kernel this backend cannot start."""
        if kind is None or kind in boots:
            return
        what = f"kernel {self.config.kernel} ({kind.value})"
        accepted = ", ".join(sorted(k.value for k in boots))
        if not kind.is_64bit and boots and all(k.is_64bit for k in boots):
            raise KernelKindUnsupported(
                f"{what} is a 32-bit kernel; the {self.config.backend} backend boots only 64-bit x86 kernels "
                f"({accepted}); build it with CONFIG_64BIT=y (`make tinyconfig` alone gives a 32-bit config: "
                f"run `lguest-harness kernel config --merge TREE` after it, or `make ARCH=x86_64 ...`)")
        raise KernelKindUnsupported(f"{what}: the {self.config.backend} backend does not boot this kind "
                                    f"(it boots: {accepted})")

    def _load_initrd(self, kernel_end: int, max_end: int | None) -> tuple[int, int]:
        if self.config.initrd is None:
            return 0, 0
        placed = load_initrd(self.memory, self.config.initrd, kernel_end=kernel_end, max_end=max_end)
        self.report.say(f"initrd {self.config.initrd}: {placed.size:#x} bytes at {placed.addr:#x}")
        return placed.addr, placed.size

    def _cmdline(self, capacity: int) -> Cmdline:
        """Yours first; then what this host needs (unless you set the same key); then the bus's devices."""
        cmdline = Cmdline(capacity)
        if self.config.kernel_args:
            cmdline.insert_str(" ".join(self.config.kernel_args))
        for addition in self.backend.cmdline_additions():
            key = addition.option.split("=", 1)[0]
            if cmdline.has(key):
                self.report.say(f"keeping your {key}= (this host would add {addition.option}: {addition.reason})")
                continue
            cmdline.insert_str(addition.option)
            self.report.say(f"adding {addition.option}: {addition.reason}")
        self.bus.add_to_cmdline(cmdline)
        self.report.say(f"command line: {cmdline}")
        return cmdline

    # -- 3. initialize, then privileges ------------------------------------------------------------------
    def _initialize(self, boot: BootSpec) -> None:
        self.bus.before_initialize()
        self.backend.initialize(boot)
        drop_privileges(self.config, self.report.say)   # as the original: only once the hypervisor is set up

    # -- 3'. or continue a snapshot: the same memory, backend and bus, state instead of a load ---------
    @classmethod
    def restore(cls, directory, *, disks: tuple = (), timeout: float | None = None, **options) -> "Launcher":
        """A Launcher that continues the snapshot in `directory` (checked now: SnapshotError),
        disks overridden in order by launcher.snapshot.DiskOverride; open() restores it."""
        image = snapshots.open_snapshot(directory)
        try:
            config = image.config(timeout=timeout, disks=tuple(disks))
        except BaseException:
            image.close()
            raise
        return cls(config, restore_from=image, **options)

    def _open_restored(self, image: snapshots.Snapshot) -> None:
        system_map = self._system_map()
        self.memory = GuestMemory.from_file(image.memory_path, image.memory_size)
        self.report.say(f"guest memory: {self.config.mem_mb} MiB mapped copy-on-write from {image.memory_path}")
        self._open_backend(system_map)
        self._place_devices()
        image.close()       # the disk copies are open now: unlinked, they go when the launcher does
        restore_bus = getattr(self.bus, "restore_state", None)
        if restore_bus is None:
            raise snapshots.SnapshotError(f"the {self.config.backend} backend's device bus cannot restore devices")
        restore_bus(image.state["devices"])
        self.backend.restore_state(image.state["backend"])
        self.bus.resume()
        self.report.say(f"restored the guest from {image.directory}")
        drop_privileges(self.config, self.report.say)

    def save(self, directory) -> dict:
        """After run() returned Stopped(PAUSED): write the guest to a snapshot directory (see
        launcher.snapshot); returns its manifest.  The guest cannot run on afterwards."""
        return snapshots.write_snapshot(directory, self)

    # -- 4. run ----------------------------------------------------------------------------------------------
    def run(self, deadline: float | None = None) -> Stopped:
        """Run until the guest ends; deadline is time.monotonic() (default: now + config.timeout,
        none for an infinite timeout)."""
        if deadline is None and self.config.time_limit is not None:
            deadline = time.monotonic() + self.config.time_limit
        stdin = self._terminal_input()
        previous = self._catch_sigterm()
        dump = self._dump_state_on_sigquit()
        try:
            event = self.backend.run(deadline)
            while isinstance(event, Notify):
                self.bus.notify(event.addr, event.value)
                event = self.backend.run(deadline)
        except KeyboardInterrupt:
            event = Stopped(Outcome.INTERRUPTED, "SIGINT")
        finally:
            if stdin is not None:
                stdin.restore()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            if dump is not None:
                signal.signal(signal.SIGQUIT, dump)
        self._reboot_pending = event.outcome is Outcome.REBOOT and self.backend_class.reboot is RebootPolicy.REEXEC
        return event

    def _terminal_input(self) -> ConsoleInput | None:
        """The launcher's stdin to the backend's UART, when that is the guest's console and
        hvc0 does not have stdin already (a virtio console reads its own input)."""
        if not self.on_terminal or self.bus_class.console_is_virtio or self.config.hvc == "stdio":
            return None
        stdin = ConsoleInput(self.backend.send_console_input,
                             lambda: self.backend.request_stop(Outcome.INTERRUPTED, "three ^C within a second"))
        stdin.start()
        return stdin

    def _catch_sigterm(self):
        if threading.current_thread() is not threading.main_thread():
            return None
        return signal.signal(signal.SIGTERM, lambda *_: self.backend.request_stop(Outcome.INTERRUPTED, "SIGTERM"))

    def _dump_state_on_sigquit(self):
        """SIGQUIT writes the state dump to stderr and the guest runs on (a JVM's thread dump):
        what a harness asks for when a guest stops answering."""
        if threading.current_thread() is not threading.main_thread():
            return None
        return signal.signal(signal.SIGQUIT, lambda *_: self.report.tell("\n".join(self.describe_state())))

    def describe_state(self) -> list[str]:
        """The vCPUs and every device's queues, as they are now (see SIGQUIT)."""
        lines = ["launcher state dump:", *self.backend.describe_vcpus()]
        for device in self.devices:
            lines += device.describe_state()
        return lines

    # -- the guest's console, as the caller sees it ---------------------------------------------------------
    def console_out(self, data: bytes) -> None:
        self._out(data)
        self.marker.feed(data, lambda: self.stats.seconds_in_run)

    def send_console_input(self, data: bytes) -> int:
        """Queue bytes for the guest's console; returns how many were taken. Thread-safe."""
        if self.bus_class.console_is_virtio:
            return self.console_device.feed(data) if self.console_device is not None else 0
        return self.backend.send_console_input(data)

    def request_stop(self, outcome: Outcome = Outcome.INTERRUPTED, detail: str = "") -> None:
        """From any thread: make run() return Stopped(outcome) promptly."""
        self.backend.request_stop(outcome, detail)

    @property
    def stats(self) -> RunStats:
        return self.backend.stats

    # -- 5. close, devices first --------------------------------------------------------------------------------
    def close(self) -> None:
        """Devices (threads joined, host sides closed, terminal restored), the bus, the
        backend, guest memory: each even when an earlier one fails; the first error is raised.
        Then a pending REEXEC reboot."""
        devices, self.devices = self.devices, []
        steps = [lambda: close_devices(devices), self.bus and self.bus.close,
                 self.backend and self.backend.close, self.memory and self.memory.close,
                 self.restore_from and self.restore_from.close]
        self.bus = None
        first: BaseException | None = None
        for step in steps:
            try:
                if step:
                    step()
            except Exception as err:    # noqa: BLE001 - close the rest, then report the first
                first = first or err
        if first is not None:
            raise first
        if self._reboot_pending:
            self._reboot_pending = False
            self.report.say("the guest asked for a restart: executing the launcher again")
            self.host.reexec()

    def _system_map(self) -> SystemMap | None:
        if self.config.system_map is None:
            return SystemMap.beside(self.config.kernel)
        try:
            return SystemMap.parse(self.config.system_map.read_text(errors="replace"))
        except OSError as exc:
            raise UsageError(f"cannot read --system-map {self.config.system_map}: {exc.strerror}") from exc
