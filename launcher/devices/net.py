"""virtio-net (5.1): receiveq 0 and transmitq 1, the virtio_net_hdr passed through unchanged.

The backend (a tap with IFF_VNET_HDR, or an in-memory pair) speaks the same header the
guest does, so a frame goes through as the guest wrote it: "It expects the exact same
format: what a coincidence!"  The header is 10 bytes (legacy struct virtio_net_hdr) unless
VIRTIO_NET_F_MRG_RXBUF or VIRTIO_F_VERSION_1 is negotiated, when it grows num_buffers to
12 (5.1.6); on_activate tells the backend which size and offloads the guest agreed to.
We never merge receive buffers, so num_buffers is always 1.
"""
from __future__ import annotations

import dataclasses
import struct
from typing import Protocol

from launcher.devices.base import (
    VIRTIO_F_NOTIFY_ON_EMPTY, VIRTIO_F_VERSION_1, VIRTIO_RING_F_INDIRECT_DESC,
    DeviceId, GuestFault, VirtioDevice, WrongDirectionBuffers, feature_bits,
)
from launcher.virtqueue import Chain

VIRTIO_NET_F_CSUM = 0
VIRTIO_NET_F_GUEST_CSUM = 1
VIRTIO_NET_F_MAC = 5
VIRTIO_NET_F_GUEST_TSO4 = 7
VIRTIO_NET_F_GUEST_TSO6 = 8
VIRTIO_NET_F_GUEST_ECN = 9
VIRTIO_NET_F_HOST_TSO4 = 11
VIRTIO_NET_F_HOST_TSO6 = 12
VIRTIO_NET_F_HOST_ECN = 13
VIRTIO_NET_F_MRG_RXBUF = 15

# setup_tun_net's list: "Expect Guest to handle everything except UFO".
ORIGINAL_FEATURES = feature_bits(
    VIRTIO_F_NOTIFY_ON_EMPTY, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_ECN,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_ECN,
    VIRTIO_RING_F_INDIRECT_DESC,
)

RECEIVEQ, TRANSMITQ = 0, 1


@dataclasses.dataclass(frozen=True)
class NetHdr:
    """struct virtio_net_hdr (legacy, 10 bytes); num_buffers follows in the 12-byte form."""
    LAYOUT = struct.Struct("<BBHHHH")
    flags: int = 0
    gso_type: int = 0
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    def pack(self, size: int = 10) -> bytes:
        raw = self.LAYOUT.pack(self.flags, self.gso_type, self.hdr_len, self.gso_size,
                               self.csum_start, self.csum_offset)
        return raw if size == 10 else raw + struct.pack("<H", 1)

    @classmethod
    def unpack(cls, raw: bytes) -> "NetHdr":
        return cls(*cls.LAYOUT.unpack_from(raw))


LEGACY_HDR_SIZE = NetHdr.LAYOUT.size   # 10
MRG_HDR_SIZE = LEGACY_HDR_SIZE + 2     # 12: + le16 num_buffers
NUM_BUFFERS_OFFSET = LEGACY_HDR_SIZE
FLAGS_OFFSET = 0

CONFIG_LAYOUT = struct.Struct("<6sH")  # struct virtio_net_config: mac[6], le16 status


@dataclasses.dataclass(frozen=True)
class Offloads:
    """What the guest can take on receive, from its accepted GUEST_* features."""
    csum: bool = False
    tso4: bool = False
    tso6: bool = False
    ecn: bool = False


class NetBackend(Protocol):
    def fileno(self) -> int | None:
        """Readable when recv_into has a frame."""

    def recv_into(self, views: list[memoryview]) -> int | None:
        """One frame (header first) scattered into views; None when none is pending."""

    def send(self, views: list[memoryview]) -> None:
        """Send one frame (header first) gathered from views."""

    def configure(self, hdr_size: int, offloads: Offloads) -> None: ...

    def close(self) -> None: ...


class NetHeaderTooShort(GuestFault):
    def __init__(self, queue: str, head: int, length: int, need: int):
        super().__init__(f"net: {queue} chain {head:#x} has {length:#x} bytes, fewer than the "
                         f"{need:#x}-byte virtio_net_hdr (5.1.6)")


def parse_mac(text: str) -> bytes:
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"MAC address {text!r} is not six colon-separated hex bytes")
    return bytes(int(p, 16) for p in parts)


class NetDevice(VirtioDevice):
    device_id = DeviceId.NET
    name = "net"
    QUEUES = ("receiveq", "transmitq")

    def __init__(self, backend: NetBackend, *, mac: bytes | str | None = None,
                 features: int = ORIGINAL_FEATURES, **kwargs):
        super().__init__(**kwargs)
        self.backend = backend
        if isinstance(mac, str):
            mac = parse_mac(mac)
        self.offered = features | self.offered
        if mac is not None:
            if len(mac) != 6:
                raise ValueError(f"MAC address must be 6 bytes, got {len(mac)}")
            self.offered |= feature_bits(VIRTIO_NET_F_MAC)
        self.mac = mac
        self.config = bytearray(CONFIG_LAYOUT.pack(mac or bytes(6), 0))
        self.rx_dropped = 0

    @property
    def hdr_size(self) -> int:
        if self.has_feature(VIRTIO_NET_F_MRG_RXBUF) or self.has_feature(VIRTIO_F_VERSION_1):
            return MRG_HDR_SIZE
        return LEGACY_HDR_SIZE

    def offloads(self) -> Offloads:
        return Offloads(csum=self.has_feature(VIRTIO_NET_F_GUEST_CSUM),
                        tso4=self.has_feature(VIRTIO_NET_F_GUEST_TSO4),
                        tso6=self.has_feature(VIRTIO_NET_F_GUEST_TSO6),
                        ecn=self.has_feature(VIRTIO_NET_F_GUEST_ECN))

    def on_activate(self) -> None:
        self.backend.configure(self.hdr_size, self.offloads())

    def config_write(self, offset: int, data: bytes) -> None:
        # 5.1.4.2 legacy: a driver without VIRTIO_NET_F_MAC... may write the mac; we record it.
        if offset + len(data) <= 6:
            self.config[offset:offset + len(data)] = data
        else:
            super().config_write(offset, data)

    def handler(self, index: int):
        return self._receive if index == RECEIVEQ else self._transmit

    def input_fd(self, index: int) -> int | None:
        return self.backend.fileno() if index == RECEIVEQ else None

    def _receive(self, chain: Chain) -> int | None:
        if chain.readable:
            raise WrongDirectionBuffers(self.name, "receiveq", chain.head, "device-readable")
        size = self.hdr_size
        if chain.writable_len < size:
            raise NetHeaderTooShort("receiveq", chain.head, chain.writable_len, size)
        length = self.backend.recv_into(chain.writable)
        if length is None:
            return None
        if size == MRG_HDR_SIZE:
            # The backend leaves num_buffers alone (tun skips it); one buffer per frame.
            chain.write_into(struct.pack("<H", 1), NUM_BUFFERS_OFFSET)
        if not self.has_feature(VIRTIO_NET_F_GUEST_CSUM):
            # 5.1.6.4.1: without GUEST_CSUM the device MUST set flags to zero; tun marks
            # forwarded frames DATA_VALID whatever offloads it was told.
            chain.write_into(b"\0", FLAGS_OFFSET)
        return length

    def _transmit(self, chain: Chain) -> int:
        if chain.writable:
            raise WrongDirectionBuffers(self.name, "transmitq", chain.head, "device-writable")
        if chain.readable_len < self.hdr_size:
            raise NetHeaderTooShort("transmitq", chain.head, chain.readable_len, self.hdr_size)
        try:
            self.backend.send(chain.readable)
        except OSError as err:
            self.metrics.host_errors += 1
            self.log.warning("frame dropped on transmit: %s", str(err))
        return 0

    def close_backend(self) -> None:
        self.backend.close()
