"""virtio-rng, the entropy device (5.4): one requestq of device-writable buffers to fill."""
from __future__ import annotations

from typing import Protocol

from launcher.devices.base import DeviceId, VirtioDevice, WrongDirectionBuffers
from launcher.virtqueue import Chain


class EntropyBackend(Protocol):
    def fill(self, views: list[memoryview]) -> int:
        """Fill every view completely; returns the bytes written."""

    def close(self) -> None: ...


class RngDevice(VirtioDevice):
    device_id = DeviceId.ENTROPY
    name = "rng"
    QUEUES = ("requestq",)

    def __init__(self, backend: EntropyBackend, **kwargs):
        super().__init__(**kwargs)
        self.backend = backend

    def handler(self, index: int):
        return self.serve

    def serve(self, chain: Chain) -> int:
        # 5.4.6.1: the device MUST NOT use the driver's readable buffers: a request is
        # device-writable only.
        if chain.readable:
            raise WrongDirectionBuffers(self.name, "requestq", chain.head, "device-readable")
        try:
            return self.backend.fill(chain.writable)
        except OSError as err:
            self.metrics.host_errors += 1
            self.log.warning("entropy source failed: %s", str(err))
            return 0

    def close_backend(self) -> None:
        self.backend.close()
