"""A device on the bench: guest memory, one FakeDriver per queue, a recording Trigger.

    bench = DeviceBench(BlockDevice(MemoryDisk(), strict=True))
    bench.negotiate()                       # ACKNOWLEDGE .. DRIVER_OK, queues live
    head = bench.driver(0).add([hdr], [512, 1]); bench.kick(0)
    bench.process(0)                        # threadless: the pure queue processing
    [(head, length, data)] = bench.driver(0).reap()

With threads=True the device runs under launcher.io.service.QueueWorkers and kick()
writes the queue's eventfd, as a hypervisor's ioeventfd would.
"""
from __future__ import annotations

import threading
import time

from launcher.devices.base import DeviceStatus, VirtioDevice
from launcher.io.service import QueueWorkers
from launcher.memory import GuestMemory

from harness.fakes.driver import FakeDriver

QUEUE_SIZE = 64
QUEUE_AREA = 0x40000        # rings + arena per queue


class RecordingTrigger:
    """Counts interrupts per queue; wait_for() blocks until one arrives."""

    def __init__(self):
        self._cond = threading.Condition()
        self.counts: dict[int, int] = {}
        self.config_changes = 0

    def trigger(self, queue_index: int) -> None:
        with self._cond:
            self.counts[queue_index] = self.counts.get(queue_index, 0) + 1
            self._cond.notify_all()

    def config_changed(self) -> None:
        with self._cond:
            self.config_changes += 1
            self._cond.notify_all()

    def total(self, queue_index: int) -> int:
        with self._cond:
            return self.counts.get(queue_index, 0)

    def wait_for(self, queue_index: int, at_least: int = 1, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.counts.get(queue_index, 0) < at_least:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no interrupt on queue {queue_index} "
                                       f"(have {self.counts.get(queue_index, 0)}, want {at_least})")
                self._cond.wait(left)


class DeviceBench:
    def __init__(self, device: VirtioDevice, *, threads: bool = False, queue_size: int = QUEUE_SIZE):
        self.device = device
        nq = len(device.queues)
        self.memory = GuestMemory(QUEUE_AREA * max(nq, 1))
        self.trigger = RecordingTrigger()
        device.trigger = self.trigger
        self.drivers = []
        for index in range(nq):
            base = index * QUEUE_AREA
            drv = FakeDriver.legacy(self.memory, queue_size, base, 4096,
                                    arena=(base + 0x8000, QUEUE_AREA - 0x8000),
                                    kick=lambda d, i=index: self._notify(i))
            self.drivers.append(drv)
        self.workers = QueueWorkers(device, self.trigger) if threads else None
        device.runner = self.workers

    def driver(self, index: int) -> FakeDriver:
        return self.drivers[index]

    def place_queues(self) -> None:
        for index, drv in enumerate(self.drivers):
            self.device.set_queue(index, drv.size, drv.desc_addr, drv.avail_addr, drv.used_addr)

    def negotiate(self, accepted: int | None = None) -> None:
        """The virtio 1.x initialisation sequence (3.1.1), or the legacy one for a legacy device."""
        dev = self.device
        dev.memory = self.memory
        self.place_queues()
        assert dev.set_status(DeviceStatus.ACKNOWLEDGE)
        assert dev.set_status(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER)
        dev.accept_features(dev.offered if accepted is None else accepted)
        status = DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER
        if not dev.legacy:
            status |= DeviceStatus.FEATURES_OK
            assert dev.set_status(status)
        assert dev.set_status(status | DeviceStatus.DRIVER_OK)

    def reset_rings(self) -> None:
        """After a device reset: fresh drivers over zeroed rings (as a guest re-probing)."""
        for index, old in enumerate(self.drivers):
            base = index * QUEUE_AREA
            self.drivers[index] = FakeDriver.legacy(self.memory, old.size, base, 4096,
                                                    arena=(base + 0x8000, QUEUE_AREA - 0x8000),
                                                    kick=lambda d, i=index: self._notify(i))

    def _notify(self, index: int) -> None:
        if self.workers is not None:
            self.workers.notify(index)

    def kick(self, index: int) -> bool:
        return self.drivers[index].kick()

    def process(self, index: int) -> bool:
        """Threadless service of one queue; raises the interrupt as a service thread would."""
        due = self.device.process(index)
        if due:
            self.trigger.trigger(index)
        return due

    def wait_used(self, index: int, count: int = 1, timeout: float = 5.0) -> list:
        """Reap until `count` used entries came back (threaded benches)."""
        deadline = time.monotonic() + timeout
        got = []
        while len(got) < count:
            got += self.drivers[index].reap()
            if len(got) >= count:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"queue {index}: {len(got)} of {count} used entries came back")
            time.sleep(0.002)
        return got

    def close(self) -> None:
        self.device.close()
        self.memory.close()

    def __enter__(self) -> "DeviceBench":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
