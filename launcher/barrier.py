"""full_fence(): order this thread's earlier stores before its later loads.

The device side of a virtqueue needs exactly one barrier that Python statements do not give:
store -> load.  x86 is TSO, but TSO lets a load complete while an earlier store still sits
in the CPU's store buffer, invisible to the vCPU on another core.  Both halves of the
notification protocol are that pattern (virtio 1.2, 2.7.7.2 and 2.7.10; Linux's virtio_mb(),
vhost's smp_mb() in vhost_enable_notify() and vhost_notify(), QEMU's smp_mb() in
virtio_queue_set_notification() and virtio_should_notify()):

    device: store avail_event / clear NO_NOTIFY     driver: store avail->idx
            FENCE                                           mb
            load avail->idx (anything new?)                 load avail_event (kick?)

    device: store used->idx                         driver: store used_event / clear NO_INTERRUPT
            FENCE                                           mb
            load used_event / flags (interrupt?)            load used->idx (anything new?)

Without the device's fence both sides can read the other's old value: the driver sleeps
without kicking (or without an interrupt coming) while work is waiting.

The fence is __atomic_thread_fence(__ATOMIC_SEQ_CST) through a tiny cffi module
(native.barrier).  Where it cannot be built, acquiring and releasing a lock stands in: on
x86 both are locked instructions, which are full barriers; on other architectures only the
native fence is.
"""
from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)

_impl = None
_kind = ""


def full_fence() -> None:
    """A sequentially consistent fence: no later load passes an earlier store."""
    (_impl or _resolve())()


def implementation() -> str:
    """Which fence full_fence() uses: 'native' or 'lock'."""
    _impl or _resolve()
    return _kind


def _resolve():
    global _impl, _kind
    try:
        from native.barrier import lib
        _impl, _kind = lib.lh_full_fence, "native"
    except Exception as err:  # noqa: BLE001 - NativeBuildError, or cffi missing altogether
        log.info("native fence unavailable (%s); using a lock's locked instructions instead", err)
        lock = threading.Lock()

        def locked_fence() -> None:
            lock.acquire()
            lock.release()

        _impl, _kind = locked_fence, "lock"
    return _impl
