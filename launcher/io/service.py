"""One service thread per virtqueue, woken by an eventfd: the original Launcher's design.

Each queue has a kick eventfd: the hypervisor attaches it to the guest's notification
(KVM ioeventfd, lguest LHREQ_EVENTFD) or the transport writes it via notify().  The
thread sleeps in poll() on that eventfd, on the device's stop eventfd and, while the queue
has buffers waiting for host input (console/net rx), on the backend's fd.  When woken it
calls device.process(index), a pure function of memory, queue and backend, and raises the
queue's interrupt through the Trigger when the engine says one is due.

The eventfds live as long as this object (the hypervisor registers them once); threads
live from start() to stop().  close() closes every fd: nothing outlives the device.
"""
from __future__ import annotations

import logging
import os
import select
import threading

from launcher.errors import DeviceError
from launcher.io.threads import start_shielded

log = logging.getLogger(__name__)

JOIN_TIMEOUT = 5.0


class ServiceThreadStuck(DeviceError):
    def __init__(self, name: str):
        super().__init__(f"service thread {name} did not stop within {JOIN_TIMEOUT}s "
                         f"(blocked in a host backend call?)")


class QueueWorkers:
    """Runs `device`'s queues; install with device.runner = QueueWorkers(device, trigger)."""

    def __init__(self, device, trigger=None):
        self.device = device
        self.trigger = trigger if trigger is not None else device.trigger
        count = len(device.queues)
        self._kick = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(count)]
        self._stop = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []
        self.closed = False

    # -- the hypervisor's view ----------------------------------------------------------------
    def eventfd(self, index: int) -> int:
        """The fd a guest notification of queue `index` should write (ioeventfd)."""
        return self._kick[index]

    def notify(self, index: int) -> None:
        """The guest notified queue `index` (when no ioeventfd is attached)."""
        os.eventfd_write(self._kick[index], 1)

    @property
    def threads(self) -> list[threading.Thread]:
        return [t for t in self._threads if t.is_alive()]

    def describe(self, index: int) -> str:
        """Whether queue `index`'s thread is alive and whether a kick is waiting for it."""
        if self.closed:
            return "service closed"
        alive = any(t.name.endswith(self.device.queues[index].name) and t.is_alive() for t in self._threads)
        poller = select.poll()
        poller.register(self._kick[index], select.POLLIN)
        kicked = bool(poller.poll(0))
        return f"thread {'running' if alive else 'not running'}, {'a kick pending' if kicked else 'no kick pending'}"

    def fds(self) -> list[int]:
        return [] if self.closed else [*self._kick, self._stop]

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if self.closed:
            raise DeviceError(f"{self.device.name}: service threads started after close()")
        if self._threads:
            return
        _drain(self._stop)
        for index, slot in enumerate(self.device.queues):
            if slot.vq is None:
                continue
            # Shielded: SIGINT/SIGTERM and the vCPU kick must land on the vCPU thread.
            thread = start_shielded(lambda i=index: self._run(i), f"{self.device.name}-{slot.name}")
            self._threads.append(thread)

    def stop(self) -> None:
        """Wake every thread with the stop eventfd and join it."""
        if not self._threads:
            return
        os.eventfd_write(self._stop, 1)
        stuck = []
        for thread in self._threads:
            if thread is threading.current_thread():
                continue    # a queue handler that resets its own device; it exits on return
            thread.join(JOIN_TIMEOUT)
            if thread.is_alive():
                stuck.append(thread.name)
        self._threads = []
        if stuck:
            raise ServiceThreadStuck(", ".join(stuck))

    def close(self) -> None:
        if self.closed:
            return
        self.stop()
        for fd in (*self._kick, self._stop):
            os.close(fd)
        self.closed = True

    # -- the thread -----------------------------------------------------------------------------
    def _run(self, index: int) -> None:
        try:
            while True:
                if self.device.process(index):
                    self.trigger.trigger(index)
                if not self._wait(index):
                    return
        except BaseException as err:   # noqa: BLE001 - recorded, and the thread ends cleanly
            log.exception("%s: service thread for queue %d died", self.device.name, index)
            self.errors.append(err)

    def _wait(self, index: int) -> bool:
        """Sleep until a kick, host input or stop; False means stop."""
        poller = select.poll()
        poller.register(self._stop, select.POLLIN)
        poller.register(self._kick[index], select.POLLIN)
        host_fd = self.device.input_fd(index)
        if host_fd is not None and self.device.has_work(index):
            poller.register(host_fd, select.POLLIN)
        events = dict(poller.poll())
        if self._stop in events:
            return False
        if self._kick[index] in events:
            _drain(self._kick[index])
        return True


def _drain(fd: int) -> None:
    try:
        os.eventfd_read(fd)
    except BlockingIOError:
        pass
