"""The KVM backend: one VM, one memory slot over GuestMemory, one or more vCPUs, legacy PC ports.

Guest kernel code on a kvm_pvm host is emulated and slow, but the exit loop is not the
bottleneck (a round trip is 30-70 us); the design keeps it that way: a bus lookup and
a handler call per exit, no allocation beyond the exit's data.

vCPU 0 (the BSP) runs on the thread that calls run(); with cpus > 1 each other vCPU (AP) has
a thread of its own (kvm_smp), started in KVM's wait-for-SIPI state, found by the guest
through the MP table (mptable), and its exits are handled by the same handlers under one
lock.  A run that ends stops and joins the APs first.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time

from native.kvm import ffi, lib

from launcher.consolewatch import ConsoleEvent, ConsoleWatcher
from launcher import kernelfacts
from launcher.hostquirks import HostKind, detect_host, kernel_options
from launcher.hypervisor import kvm_clock, kvm_exits, kvm_longmode as lm, kvm_snapshot, mptable
from launcher.hypervisor.base import (
    Backend, BootLayout, BootSpec, CmdlineAddition, ConsoleOut, Notify, Outcome, RunEvent, RunStats, Stopped,
)
from launcher.hypervisor.bus import mmio_bus, port_bus
from launcher.hypervisor.errors import NotInitialized, SnapshotUnsupported, TooManyVcpus, TransportUnsupported
from launcher.hypervisor import i8042
from launcher.hypervisor.kvm_ports import COM1_BASE, COM1_IRQ, COM1_LEN, CMOS_INDEX, Cmos, UartPorts
from launcher.hypervisor.kvm_cpuid import present_as_guest, with_apic_id
from launcher.hypervisor.kvm_smp import ApThreads
from launcher.hypervisor.kvm_virtio import KvmVirtioMmio
from launcher.hypervisor.kvm_virtio_pci import KvmVirtioPci
from launcher.hypervisor.kvm_sys import KvmSystem, ioctl
from launcher.hypervisor.kvm_vcpu import Vcpu, install_kick_handler
from launcher.io.threads import start_shielded
from launcher.loader import E820Entry, E820Type, HardwareSubarch, KernelKind, LoadFlags
from launcher.symbols import SystemMap
from launcher.uart import Uart8250

LOW_RAM_END = mptable.BASE  # 639 KiB: a real PC's conventional memory; the last KiB holds the MP table
HIGH_RAM_START = 0x100000
MAX_MEMORY = 0xC0000000    # stay below the 32-bit PCI hole and KVM's TSS pages
INITRD_MAX_END = 0x7FFFFFFF + 1
PANIC_GRACE = 1.5          # seconds to keep running after a panic line, so its trace reaches the console
WATCHDOG_TICK = 0.1
HALT_PROBE_AFTER = 2.0     # seconds without an exit before the watchdog looks for a dead halt
RFLAGS_IF = 1 << 9
TRANSPORTS = {"mmio": KvmVirtioMmio, "pci": KvmVirtioPci}     # --transport


class KvmBackend(Backend):
    name = "kvm"
    bus = KvmVirtioMmio
    snapshots = True
    max_cpus = mptable.max_cpus()
    # Linux is entered at its 64-bit entry in long mode; a 32-bit kernel's startup_32 triple-faults here.
    boots = frozenset({KernelKind.ELF64, KernelKind.BZIMAGE_ELF64})

    @classmethod
    def bus_for(cls, transport: str | None, kernel) -> type:
        """virtio-mmio or virtio-pci; by default mmio, unless the files beside the kernel say it
        cannot take virtio_mmio.device= (Debian's stock kernels), then pci."""
        if transport is None:
            transport = "pci" if kernelfacts.mmio_cmdline_devices(kernel) is False else "mmio"
        if transport not in TRANSPORTS:
            raise TransportUnsupported(f"--transport={transport}: the kvm backend has {', '.join(TRANSPORTS)}")
        return TRANSPORTS[transport]

    def __init__(self, memory, console_out: ConsoleOut, *, irqchip: bool = True,
                 system_map: SystemMap | None = None, kvm_path: str = "/dev/kvm",
                 host: HostKind | None = None, ram_size: int | None = None, cpus: int = 1):
        self.memory = memory
        self.irqchip = irqchip
        if not 1 <= cpus <= self.max_cpus or (cpus > 1 and not irqchip):
            raise TooManyVcpus(f"{cpus} vCPUs: this backend runs 1 to {self.max_cpus}, more than one only with "
                               f"the in-kernel irqchip (the APs wait for the INIT/SIPI its local APICs deliver)")
        self.cpus = cpus
        self.pci_routes: tuple = ()             # INTx routes for the MP table (KvmVirtioPci sets them)
        self.system_map = system_map
        self.host = host or detect_host()
        self.stats = RunStats()
        self._console_out = console_out
        self._device_lock = threading.Lock()   # device state is shared with the console input thread
        self._stop_lock = threading.Lock()
        if threading.current_thread() is threading.main_thread():
            install_kick_handler()
        self._system = KvmSystem(kvm_path)
        self.vm_fd = -1
        self.vcpu: Vcpu | None = None           # the BSP, vcpus[0]
        self.vcpus: list[Vcpu] = []
        self._aps = ApThreads(self)
        # Devices are shared by every vCPU's exits: one at a time (no lock needed for one vCPU).
        self._exit_lock = threading.Lock() if cpus > 1 else contextlib.nullcontext()
        self._handlers = {
            lib.KVM_EXIT_IO: self._exit_io,
            lib.KVM_EXIT_MMIO: self._exit_mmio,
            lib.KVM_EXIT_INTR: self._exit_intr,
            lib.KVM_EXIT_HLT: self._exit_hlt,
            lib.KVM_EXIT_SHUTDOWN: self._exit_shutdown,
            lib.KVM_EXIT_INTERNAL_ERROR: self._exit_internal_error,
            lib.KVM_EXIT_FAIL_ENTRY: self._exit_fail_entry,
        }
        try:
            self._create_vm()
        except BaseException:
            self.close()
            raise

    # -- construction -----------------------------------------------------------
    def _create_vm(self) -> None:
        self.vm_fd = self._system.create_vm()
        ioctl(self.vm_fd, lib.KVM_SET_TSS_ADDR, lm.TSS_ADDR)
        ioctl(self.vm_fd, lib.KVM_SET_IDENTITY_MAP_ADDR, ffi.new("__u64 *", lm.IDENTITY_MAP_ADDR))
        region = ffi.new("struct kvm_userspace_memory_region *")
        region.slot, region.flags, region.guest_phys_addr = 0, 0, 0
        region.memory_size, region.userspace_addr = self.memory.size, self.memory.host_address
        ioctl(self.vm_fd, lib.KVM_SET_USER_MEMORY_REGION, region)
        if self.irqchip:
            ioctl(self.vm_fd, lib.KVM_CREATE_IRQCHIP, 0)
            pit = ffi.new("struct kvm_pit_config *")
            pit.flags = lib.KVM_PIT_SPEAKER_DUMMY
            ioctl(self.vm_fd, lib.KVM_CREATE_PIT2, pit)
        # KVM makes vCPU 0 the BSP and, with the in-kernel irqchip, parks the others until a SIPI.
        self.vcpus = [Vcpu(self.vm_fd, index, self._system.vcpu_mmap_size()) for index in range(self.cpus)]
        self.vcpu = self.vcpus[0]
        # CPUID set here has no effect on kvm_pvm (the guest sees the host's); on an ordinary
        # KVM the guest sees what KVM supports, as a guest of a hypervisor (kvm_cpuid).
        cpuid = self._system.supported_cpuid()
        present_as_guest(cpuid)
        for vcpu in self.vcpus:
            with_apic_id(cpuid, vcpu.index, self.cpus)
            vcpu.set_cpuid(cpuid)
            vcpu.set_fpu_defaults()
        self._reset_devices()

    def _reset_devices(self) -> None:
        self.watcher = ConsoleWatcher()
        self.uart = Uart8250(out=self._console_bytes, trigger=lambda: self.raise_interrupt(COM1_IRQ))
        self.ports = port_bus()
        self.ports.register(COM1_BASE, COM1_LEN, UartPorts(self.uart, self._device_lock))
        self.ports.register(CMOS_INDEX, 2, Cmos())
        self.ports.register(i8042.DATA_PORT, i8042.PORTS, i8042.I8042(self._on_reset))
        self.mmio = mmio_bus()
        self._stop: Stopped | None = None
        self._notifies: list[Notify] = []       # from APs, handed out by the BSP's run()
        self._halted: list[str | None] = [None] * self.cpus   # per vCPU, in a halt probe: where it halted for good
        self._panic_deadline: float | None = None
        self._initialized = False
        self.console_broken = False

    # -- the Backend interface ----------------------------------------------------
    def boot_layout(self) -> BootLayout:
        size = self.memory.size
        e820 = [E820Entry(0, min(LOW_RAM_END, size))]
        if self.cpus > 1:
            e820.append(E820Entry(mptable.BASE, mptable.AREA, E820Type.RESERVED))
        if size > HIGH_RAM_START:
            e820.append(E820Entry(HIGH_RAM_START, size - HIGH_RAM_START))
        return BootLayout(
            boot_params=lm.ZERO_PAGE, cmdline=lm.CMDLINE_ADDR, cmdline_capacity=lm.CMDLINE_CAPACITY,
            e820=tuple(e820), hardware_subarch=HardwareSubarch.PC, loadflags=LoadFlags.LOADED_HIGH,
            version=0x20C, prefer_elf=True, initrd_max_end=INITRD_MAX_END,
            copy_setup_header=True, kernel_kinds=self.boots)

    def cmdline_additions(self) -> list[CmdlineAddition]:
        console = CmdlineAddition("console=ttyS0", "this backend's console is the 8250 UART at 0x3f8")
        keyboard = [CmdlineAddition(o, "the i8042 has no mouse and no keyboard behind it (launcher.hypervisor.i8042)")
                    for o in i8042.KERNEL_OPTIONS]
        quirks = [CmdlineAddition(o.render(), o.reason) for o in kernel_options(self.host, self.tsc_khz())]
        return [console, *keyboard, *quirks]

    def tsc_khz(self) -> int | None:
        return self.vcpu.tsc_khz()

    def initialize(self, boot: BootSpec) -> None:
        gdt_limit = lm.write_gdt(self.memory)
        sregs = self.vcpu.get_sregs()
        if boot.kind.is_64bit:
            lm.write_page_tables(self.memory)
            lm.set_long_mode_sregs(sregs, gdt_limit)
        else:
            lm.set_protected_mode_sregs(sregs, gdt_limit)
        self.vcpu.set_sregs(sregs)
        regs = self.vcpu.get_regs()
        lm.set_boot_regs(regs, boot.entry, boot.boot_params)
        self.vcpu.set_regs(regs)
        if self.cpus > 1:
            # The MP table declares the vCPUs' local APICs and KVM's IOAPIC.  A single vCPU gets none:
            # the guest keeps the PIC in virtual-wire mode, as every uniprocessor guest here always
            # has (with the table, the recipe kernel switched to the IOAPIC and stalled on kvm_pvm).
            mptable.write(self.memory, self.cpus, pci_routes=self.pci_routes)
        kvm_clock.set_clock(self.vm_fd, 0)      # kvm-clock starts with the guest, not with the VM
        self._initialized = True

    def raise_interrupt(self, irq: int) -> None:
        if not self.irqchip or self.vm_fd < 0:
            return  # bare test VMs have no interrupt controller; a closed VM has no guest
        level = ffi.new("struct kvm_irq_level *")
        level.irq = irq
        # An edge for the (edge-triggered) ISA line: the PIC and IOAPIC latch the rising edge.
        for value in (1, 0):
            level.level = value
            ioctl(self.vm_fd, lib.KVM_IRQ_LINE, level)

    def attach_eventfd(self, addr: int, fd: int, *, length: int = 4, datamatch: int | None = None,
                       detach: bool = False) -> None:
        """KVM_IOEVENTFD: a guest write at addr signals fd; detach=True removes exactly that one."""
        ev = ffi.new("struct kvm_ioeventfd *")
        ev.addr, ev.len, ev.fd = addr, length, fd
        if datamatch is not None:
            ev.flags, ev.datamatch = lib.KVM_IOEVENTFD_FLAG_DATAMATCH, datamatch
        if detach:
            ev.flags |= lib.KVM_IOEVENTFD_FLAG_DEASSIGN
        ioctl(self.vm_fd, lib.KVM_IOEVENTFD, ev)

    def attach_irqfd(self, fd: int, gsi: int) -> None:
        """KVM extra: a device thread raises `gsi` by writing to eventfd `fd`."""
        irqfd = ffi.new("struct kvm_irqfd *")
        irqfd.fd, irqfd.gsi = fd, gsi
        ioctl(self.vm_fd, lib.KVM_IRQFD, irqfd)

    def send_console_input(self, data: bytes) -> int:
        with self._device_lock:
            return self.uart.enqueue(data)

    def request_stop(self, outcome: Outcome, detail: str = "") -> None:
        with self._stop_lock:
            if self._stop is None:
                self._stop = Stopped(outcome, detail)
        if self.vcpu is not None:
            self.vcpu.kick()

    def restart(self) -> None:
        self._close_vm()
        self._create_vm()

    def run(self, deadline: float | None = None) -> RunEvent:
        if not self._initialized:
            raise NotInitialized("KvmBackend.run() before initialize()")
        self.vcpu.thread_id = threading.get_ident()
        self._aps.start()
        done = threading.Event()
        watchdog = start_shielded(lambda: self._watchdog(deadline, done), "kvm-watchdog")
        event = None
        try:
            event = self._loop(self.vcpu)
            return event
        except KeyboardInterrupt:
            event = self._finish(Stopped(Outcome.INTERRUPTED, "interrupted by SIGINT"))
            return event
        finally:
            done.set()
            watchdog.join()
            self.vcpu.immediate_exit = 0
            if not isinstance(event, Notify):
                self._aps.stop()        # the guest has ended (or run() raised): no vCPU runs on

    # -- snapshots (launcher.hypervisor.kvm_snapshot) --------------------------------
    def save_state(self) -> dict:
        """The vCPU (after completing the exit it stopped on), the in-kernel PIC, IOAPIC,
        PIT and clock, and the 8250.  The vCPU must be out of run()."""
        if not self._initialized:
            raise NotInitialized("KvmBackend.save_state() before the guest ran")
        if self.cpus > 1:
            raise SnapshotUnsupported(f"snapshots hold one vCPU, and this guest has {self.cpus} (--cpus): "
                                             f"boot it with --cpus 1 to snapshot it")
        kvm_snapshot.complete_pending_io(self.vcpu)
        with self._device_lock:
            uart = self.uart.save_state()
        return {"host": self.host.value, "tsc_khz": self.tsc_khz(), "irqchip": self.irqchip,
                "struct_sizes": kvm_snapshot.struct_sizes(), "vm": kvm_snapshot.save_vm(self.vm_fd),
                "vcpu": kvm_snapshot.save_vcpu(self._system, self.vcpu), "uart": uart}

    def restore_state(self, state: dict) -> None:
        """Instead of initialize(): this VM (memory, bus and devices in place) takes the state."""
        self.check_state(state)
        kvm_snapshot.restore_vm(self.vm_fd, state["vm"])
        kvm_snapshot.restore_vcpu(self._system, self.vcpu, state["vcpu"])
        with self._device_lock:
            self.uart.load_state(state["uart"])
        self._initialized = True

    def check_state(self, state: dict) -> None:
        """Refuse state this host cannot continue: other struct sizes, no irqchip, another TSC rate
        (KVM_CAP_TSC_CONTROL may be missing, as on kvm_pvm, so the guest would see time run at
        the wrong speed)."""
        mismatch = kvm_snapshot.StateMismatch
        if state.get("struct_sizes") != kvm_snapshot.struct_sizes():
            raise mismatch("the snapshot was taken where KVM's state structs have other sizes")
        if not state.get("irqchip") or not self.irqchip:
            raise mismatch("snapshots need the in-kernel irqchip")
        ours = self.tsc_khz()
        if state.get("tsc_khz") != ours:
            raise mismatch(f"the snapshot's TSC ran at {state.get('tsc_khz')} kHz, this host's runs at {ours} kHz")

    # -- the exit loop -------------------------------------------------------------
    def _loop(self, vcpu: Vcpu) -> RunEvent:
        """The BSP's loop; the APs' is kvm_smp.ApThreads, around the same step()."""
        while True:
            if self._stop is not None:
                return self._finish(self._stop)
            if self._notifies:
                return self._notifies.pop(0)
            event = self.step(vcpu)
            if event is not None:
                return self._finish(event) if isinstance(event, Stopped) else event

    def step(self, vcpu: Vcpu) -> RunEvent | None:
        """One KVM_RUN of `vcpu` and its exit's handler (under the exit lock when vCPUs share devices)."""
        clock, cpu = time.perf_counter, time.thread_time
        start, cpu_start = clock(), cpu()
        reason = vcpu.run()
        with self._exit_lock:
            self.stats.seconds_in_run += clock() - start
            self.stats.cpu_in_run += cpu() - cpu_start
            self.stats.count(kvm_exits.exit_name(reason))
            handler = self._handlers.get(reason)
            return handler(vcpu) if handler else self._unexpected(vcpu, reason)

    def _exit_intr(self, vcpu: Vcpu):
        """A kick: a stop request or an AP's notification (both seen by the loops), or the watchdog
        asking whether the vCPUs are halted with interrupts off (or never started), which only an
        NMI could end: the run ends there."""
        vcpu.immediate_exit = 0
        if not vcpu.halt_probe:
            return None
        vcpu.halt_probe = False
        dead = self.irqchip and (self._halted_for_good(vcpu))
        self._halted[vcpu.index] = dead or None
        if all(self._halted):
            where = self._halted[0]
            what = "the vCPU" if self.cpus == 1 else f"every vCPU (the {self.cpus - 1} APs parked or halted too)"
            self.request_stop(Outcome.HALTED, f"{what} halted with interrupts disabled at {where}")
        return None

    def _halted_for_good(self, vcpu: Vcpu) -> str | None:
        """Where `vcpu` halted with interrupts off, or "never started" for an AP still waiting for
        its SIPI; None while it can still run.  Called on the vCPU's own thread."""
        state = vcpu.mp_state()
        if state == lib.KVM_MP_STATE_UNINITIALIZED and vcpu.index > 0:
            return "never started"
        if state == lib.KVM_MP_STATE_HALTED and not vcpu.get_regs().rflags & RFLAGS_IF:
            return self._where(vcpu)
        return None

    def _finish(self, event: Stopped) -> Stopped:
        if self.watcher.seen(ConsoleEvent.PANIC) and event.outcome is not Outcome.INTERRUPTED:
            return Stopped(Outcome.PANIC, self.watcher.panic_line or "Kernel panic")
        return event

    def _exit_io(self, vcpu: Vcpu):
        io, data = vcpu.io, vcpu.io_data()
        port, size = io.port, io.size
        if io.direction == lib.KVM_EXIT_IO_OUT:
            for i in range(io.count):
                self.ports.write(port, size, int.from_bytes(data[i * size:(i + 1) * size], "little"))
        else:
            for i in range(io.count):
                data[i * size:(i + 1) * size] = self.ports.read(port, size).to_bytes(size, "little")
        return self._stop

    def _exit_mmio(self, vcpu: Vcpu):
        mmio = vcpu.mmio
        addr, length = mmio.phys_addr, mmio.len
        if mmio.is_write:
            value = int.from_bytes(bytes(mmio.data)[:length], "little")
            if not self.mmio.write(addr, length, value):
                return Notify(addr, value)
        else:
            value = self.mmio.read(addr, length)
            mmio.data[0:length] = list(value.to_bytes(length, "little"))
        return self._stop

    def _exit_hlt(self, vcpu: Vcpu):
        return Stopped(Outcome.HALTED, f"hlt at {self._where(vcpu)}")

    def _exit_shutdown(self, vcpu: Vcpu):
        if self.watcher.seen(ConsoleEvent.RESTART):
            return Stopped(Outcome.REBOOT, "the guest reset itself (triple fault after 'Restarting system')")
        return Stopped(Outcome.GUEST_CRASH, f"the guest triple-faulted (KVM_EXIT_SHUTDOWN) at {self._where(vcpu)}")

    def _exit_internal_error(self, vcpu: Vcpu):
        internal, rip = vcpu.internal, vcpu.get_regs().rip
        if internal.suberror == lib.KVM_INTERNAL_ERROR_EMULATION:
            emu = vcpu.emulation
            has_bytes = internal.ndata >= 2 and emu.flags & lib.KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES
            insn = bytes(emu.insn_bytes)[:emu.insn_size] if has_bytes else b""
            return Stopped(Outcome.EMULATION_FAILURE, kvm_exits.emulation_failure(insn, rip, self.system_map))
        data = [internal.data[i] for i in range(min(internal.ndata, 16))]
        return Stopped(Outcome.GUEST_CRASH, kvm_exits.internal_error(internal.suberror, data, rip, self.system_map))

    def _exit_fail_entry(self, vcpu: Vcpu):
        reason = vcpu.fail_entry.hardware_entry_failure_reason
        return Stopped(Outcome.GUEST_CRASH,
                       f"KVM could not enter the guest (hardware entry failure reason {reason:#x}) at {self._where(vcpu)}")

    def _unexpected(self, vcpu: Vcpu, reason: int):
        return Stopped(Outcome.GUEST_CRASH, f"unexpected {kvm_exits.exit_name(reason)} at {self._where(vcpu)}")

    def describe_vcpus(self) -> list[str]:
        """The BSP's place (read on the thread that runs it: the state dump's signal handler); an
        AP's registers cannot be read from here while its thread sits in KVM_RUN, so only its count."""
        if not self._initialized:
            return ["vCPU 0: not started"]
        flags = self.vcpu.get_regs().rflags
        lines = [f"vCPU 0: at {self._where(self.vcpu)}, interrupts {'on' if flags & RFLAGS_IF else 'off'}, "
                 f"mp_state {self.vcpu.mp_state()}"]
        if self.cpus > 1:
            lines.append(f"vCPUs 1-{self.cpus - 1}: each on its own thread (registers not read from here)")
        return lines

    def _where(self, vcpu: Vcpu) -> str:
        """RIP and symbol, and which vCPU when there are several (call on `vcpu`'s own thread)."""
        where = kvm_exits.where(vcpu.get_regs().rip, self.system_map)
        return where if self.cpus == 1 else f"{where} on vCPU {vcpu.index}"

    # -- devices' callbacks ------------------------------------------------------------
    def _console_bytes(self, data: bytes) -> None:
        if not self.console_broken:
            try:
                self._console_out(data)
            except (BrokenPipeError, OSError):
                self.console_broken = True  # a closed stdout must not kill the guest
        for event in self.watcher.feed(data):
            self._on_console_event(event)

    def _on_console_event(self, event: ConsoleEvent) -> None:
        if event is ConsoleEvent.PANIC:
            self._panic_deadline = time.monotonic() + PANIC_GRACE
        elif event is ConsoleEvent.POWER_OFF:
            self.request_stop(Outcome.POWER_OFF, "the kernel printed 'reboot: Power down'")
        elif event is ConsoleEvent.HALTED:
            self.request_stop(Outcome.HALTED, "the kernel printed 'System halted'")
        elif event is ConsoleEvent.RESTART:
            self.request_stop(Outcome.REBOOT, "the kernel printed 'reboot: Restarting system'")

    def _on_reset(self) -> None:
        self.request_stop(Outcome.REBOOT, "the guest reset itself through the keyboard controller (0xfe to port 0x64)")

    def _watchdog(self, deadline: float | None, done: threading.Event) -> None:
        exits, quiet_since = -1, time.monotonic()
        while not done.wait(WATCHDOG_TICK):
            now = time.monotonic()
            total = sum(self.stats.exits.values())
            if total != exits:
                exits, quiet_since = total, now
            elif now - quiet_since >= HALT_PROBE_AFTER:    # blocked in KVM_RUN: halted, or just idle
                quiet_since = now
                self._halted = [None] * self.cpus
                for vcpu in self.vcpus:
                    vcpu.halt_probe = True
                    vcpu.kick()
            if self._panic_deadline is not None and now >= self._panic_deadline:
                self.request_stop(Outcome.PANIC, self.watcher.panic_line or "Kernel panic")
                return
            if deadline is not None and now >= deadline:
                self.request_stop(Outcome.TIMEOUT, "the run reached its timeout")
                return

    # -- teardown -------------------------------------------------------------------------
    def _close_vm(self) -> None:
        self._aps.stop()
        for vcpu in self.vcpus:
            vcpu.close()
        self.vcpus, self.vcpu = [], None
        if self.vm_fd >= 0:
            os.close(self.vm_fd)
            self.vm_fd = -1

    def close(self) -> None:
        self._close_vm()
        self._system.close()
