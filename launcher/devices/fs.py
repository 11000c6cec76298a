"""virtio-fs (virtio 1.2, 5.11): a host directory the guest mounts by tag, with the FUSE
requests served by a vhost-user backend process (virtiofsd), never by our threads.

The device model keeps what the driver sees from us: the config space (tag, request queue
count), the features the backend offers, and the status life cycle.  Its runner
(launcher.io.vhost_user.VhostUserRunner) hands the rings to the backend at DRIVER_OK and takes
them back at reset.  A backend that fails or dies makes the device DEVICE_NEEDS_RESET (2.1.2),
so the guest sees the device fail; the launcher never waits on it.
"""
from __future__ import annotations

import struct

from launcher.devices.base import (
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, DeviceId, VirtioDevice,
)
from launcher.errors import DeviceError

TAG_SIZE = 36                   # struct virtio_fs_config: u8 tag[36]; le32 num_request_queues
CONFIG = struct.Struct(f"<{TAG_SIZE}sI")
# What we let through from the backend's offer; the transport adds its own bits.
SUPPORTED_FEATURES = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_INDIRECT_DESC) | (1 << VIRTIO_RING_F_EVENT_IDX)


class FsTagInvalid(DeviceError):
    def __init__(self, tag: str, why: str):
        super().__init__(f"virtio-fs tag {tag!r}: {why} (a tag is 1 to {TAG_SIZE} bytes of UTF-8, no NUL)")


def encode_tag(tag: str) -> bytes:
    raw = tag.encode("utf-8")
    if not raw or len(raw) > TAG_SIZE:
        raise FsTagInvalid(tag, f"{len(raw)} bytes")
    if b"\0" in raw or b"/" in raw or any(c <= 0x20 for c in raw):
        raise FsTagInvalid(tag, "holds NUL, '/', a space or a control character")
    return raw


class FsDevice(VirtioDevice):
    device_id = DeviceId.FS
    name = "fs"
    QUEUES = ("hiprio", "request")      # one request queue (num_request_queues = 1)
    QUEUE_SIZE = 128
    external_queues = True              # the transport must not serve the rings itself

    def __init__(self, tag: str, backend_features: int, **kwargs):
        super().__init__(offered=backend_features & SUPPORTED_FEATURES,
                         config=CONFIG.pack(encode_tag(tag), len(self.QUEUES) - 1), **kwargs)
        self.tag = tag
        self.feature_mask = backend_features & SUPPORTED_FEATURES   # never offer what the backend lacks
        self.failure: str | None = None
        self.on_failure = lambda reason: None   # e.g. `run` ends the guest: its root is gone

    def activate(self, memory=None) -> None:
        """Hand the rings to the backend (the runner); a backend that refuses fails the device."""
        try:
            super().activate(memory)
        except DeviceError as err:
            self.active = False
            self.backend_failed(str(err))

    def _make_queue(self, slot):
        return None                     # the backend reads the rings; we build no engine

    def backend_failed(self, reason: str) -> None:
        """From any thread: the backend refused a request, broke the protocol or died."""
        with self._lock:
            if self.failure is None:
                self.failure = reason
                self.log.error("%s", reason)
            self.metrics.host_errors += 1
            self._needs_reset()
        self.on_failure(reason)

    def handler(self, index: int):
        raise DeviceError(f"{self.name}: queue {index} is served by the vhost-user backend, not here")
