"""One KVM vCPU: its fd, the mmap'ed struct kvm_run, registers, and KVM_RUN itself.

KVM_RUN is called through the cffi lib, which releases the GIL; a kick (immediate_exit
plus a signal aimed at this thread) makes it return -EINTR, which is how timeouts and
stop requests reach a vCPU that is spinning or halted inside the kernel.
"""
from __future__ import annotations

import errno
import mmap
import os
import signal
import threading

from native.kvm import ffi, lib

from launcher.hypervisor.errors import IoctlFailed
from launcher.hypervisor.kvm_sys import ioctl

KICK_SIGNAL = signal.SIGUSR1


def install_kick_handler() -> None:
    """A do-nothing Python handler, so the kick interrupts KVM_RUN instead of killing us.

    Python installs C handlers without SA_RESTART, so the blocked ioctl returns EINTR.
    Must run on the main thread (Python's rule for signal.signal)."""
    if signal.getsignal(KICK_SIGNAL) in (signal.SIG_DFL, signal.SIG_IGN, None):
        signal.signal(KICK_SIGNAL, lambda signum, frame: None)


class Vcpu:
    def __init__(self, vm_fd: int, index: int, mmap_size: int):
        self.index = index                      # KVM's vCPU id, also its local APIC id
        self.halt_probe = False                 # the watchdog asks: halted for good? (KvmBackend)
        self.fd = ioctl(vm_fd, lib.KVM_CREATE_VCPU, index)
        self._map = mmap.mmap(self.fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.view = memoryview(self._map)
        self._payload = lib.LH_RUN_PAYLOAD
        base = ffi.from_buffer(self._map)
        self.io = ffi.cast("struct lh_exit_io *", base + self._payload)
        self.mmio = ffi.cast("struct lh_exit_mmio *", base + self._payload)
        self.internal = ffi.cast("struct lh_exit_internal *", base + self._payload)
        self.emulation = ffi.cast("struct lh_exit_emulation *", base + self._payload)
        self.fail_entry = ffi.cast("struct lh_exit_fail_entry *", base + self._payload)
        self._base = base
        self.thread_id: int | None = None

    # -- registers --------------------------------------------------------------
    def get_regs(self):
        regs = ffi.new("struct kvm_regs *")
        ioctl(self.fd, lib.KVM_GET_REGS, regs)
        return regs

    def mp_state(self) -> int:
        state = ffi.new("struct kvm_mp_state *")
        ioctl(self.fd, lib.KVM_GET_MP_STATE, state)
        return state.mp_state

    def set_regs(self, regs) -> None:
        ioctl(self.fd, lib.KVM_SET_REGS, regs)

    def get_sregs(self):
        sregs = ffi.new("struct kvm_sregs *")
        ioctl(self.fd, lib.KVM_GET_SREGS, sregs)
        return sregs

    def set_sregs(self, sregs) -> None:
        ioctl(self.fd, lib.KVM_SET_SREGS, sregs)

    def set_fpu_defaults(self) -> None:
        fpu = ffi.new("struct kvm_fpu *")
        fpu.fcw, fpu.mxcsr = 0x37F, 0x1F80  # the FNINIT/reset values
        ioctl(self.fd, lib.KVM_SET_FPU, fpu)

    def set_cpuid(self, cpuid) -> None:
        ioctl(self.fd, lib.KVM_SET_CPUID2, cpuid)

    def tsc_khz(self) -> int | None:
        r = lib.lh_ioctl_int(self.fd, lib.KVM_GET_TSC_KHZ, 0)
        return r if r > 0 else None

    # -- running ----------------------------------------------------------------
    def run(self) -> int:
        """One KVM_RUN; returns the exit reason, or KVM_EXIT_INTR when interrupted."""
        r = lib.lh_ioctl(self.fd, lib.KVM_RUN, ffi.NULL)
        if r < 0:
            if -r in (errno.EINTR, errno.EAGAIN):
                return lib.KVM_EXIT_INTR
            raise IoctlFailed(f"KVM_RUN failed: {os.strerror(-r)} (errno {errno.errorcode.get(-r, -r)})")
        return int.from_bytes(self.view[lib.LH_RUN_EXIT_REASON:lib.LH_RUN_EXIT_REASON + 4], "little")

    @property
    def immediate_exit(self) -> int:
        return self.view[lib.LH_RUN_IMMEDIATE_EXIT]

    @immediate_exit.setter
    def immediate_exit(self, value: int) -> None:
        self.view[lib.LH_RUN_IMMEDIATE_EXIT] = value

    def kick(self) -> None:
        """From any thread: make the current or next KVM_RUN return promptly."""
        self.immediate_exit = 1
        # Without our handler the signal's default action would kill the process; then
        # immediate_exit alone must do (it ends the next KVM_RUN, not a blocked one).
        handled = callable(signal.getsignal(KICK_SIGNAL))
        if handled and self.thread_id is not None and self.thread_id != threading.get_ident():
            try:
                signal.pthread_kill(self.thread_id, KICK_SIGNAL)
            except ProcessLookupError:
                pass

    def io_data(self) -> memoryview:
        io = self.io
        return self.view[io.data_offset:io.data_offset + io.size * io.count]

    def close(self) -> None:
        if self.fd < 0:
            return
        self.io = self.mmio = self.internal = self.emulation = self.fail_entry = None
        ffi.release(self._base)  # the buffer export would keep the mmap from closing
        self._base = None
        self.view.release()
        self._map.close()
        os.close(self.fd)
        self.fd = -1
