"""The application processors: one thread per vCPU 1..n-1, each looping on KVM_RUN.

KVM creates every vCPU but the BSP in KVM_MP_STATE_UNINITIALIZED (wait-for-SIPI) when the
irqchip is in the kernel, so an AP's first KVM_RUN blocks until the guest's BSP sends it
INIT and a start-up IPI through its local APIC; a guest that never does (a kernel without
SMP) leaves it blocked there, which costs nothing.  An AP's exits go through the backend's
handlers (KvmBackend.step), with three differences from the BSP's loop: a notification is
queued for the BSP (whose run() hands it to the launcher) and the BSP is kicked; an end of
the guest (a Stopped) becomes the backend's stop request, which ends the BSP's run(); and
the thread ends when stop() asks, kicking the vCPU out of KVM_RUN (immediate_exit plus the
kick signal, which the thread must not block: start_shielded blocks it, so the thread
unblocks it first).
"""
from __future__ import annotations

import signal
import threading

from launcher.hypervisor.base import Notify, Stopped
from launcher.hypervisor.kvm_vcpu import KICK_SIGNAL
from launcher.io.threads import start_shielded

JOIN_TIMEOUT = 5.0


class ApThreads:
    def __init__(self, backend):
        self.backend = backend
        self.threads: list[threading.Thread] = []
        self.quit = threading.Event()

    def start(self) -> None:
        """Start the APs' threads if they are not running (run() calls this every time)."""
        if self.threads:
            return
        self.quit.clear()
        for vcpu in self.backend.vcpus[1:]:
            ready = threading.Event()
            self.threads.append(start_shielded(lambda v=vcpu, r=ready: self._run(v, r), f"kvm-ap{vcpu.index}"))
            ready.wait()        # thread_id is set: a kick from now on reaches it

    def _run(self, vcpu, ready: threading.Event) -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {KICK_SIGNAL})
        vcpu.thread_id = threading.get_ident()
        ready.set()
        backend = self.backend
        while not self.quit.is_set() and backend._stop is None:
            event = backend.step(vcpu)
            if isinstance(event, Notify):
                backend._notifies.append(event)
                backend.vcpu.kick()
            elif isinstance(event, Stopped):
                backend.request_stop(event.outcome, event.detail)
                return

    def stop(self) -> None:
        """Make every AP leave KVM_RUN and end its thread; returns once they have."""
        if not self.threads:
            return
        self.quit.set()
        for vcpu in self.backend.vcpus[1:]:
            vcpu.kick()
        for thread in self.threads:
            thread.join(JOIN_TIMEOUT)
        self.threads = []
