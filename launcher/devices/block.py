"""virtio-blk (5.2): T_IN, T_OUT, T_FLUSH, T_GET_ID over a BlockBackend.

Every request is validated before any I/O (5.2.6): a 16-byte readable header first, a
writable status byte last, data in 512-byte multiples in the direction the type needs, and
the sectors inside the disk.  A request reaching past the end gets VIRTIO_BLK_S_IOERR and
the backend is never called, so the file is never extended (the original truncated the file
back and died; we refuse and keep running).
"""
from __future__ import annotations

import dataclasses
import struct
from enum import IntEnum
from typing import Protocol

from launcher.devices.base import (
    DeviceId, GuestFault, VirtioDevice, feature_bits, split_views, gather, total_len,
)
from launcher.virtqueue import Chain, scatter

SECTOR_SIZE = 512
VIRTIO_BLK_ID_BYTES = 20

VIRTIO_BLK_F_SIZE_MAX = 1
VIRTIO_BLK_F_SEG_MAX = 2
VIRTIO_BLK_F_RO = 5
VIRTIO_BLK_F_FLUSH = 9


class BlkType(IntEnum):
    VIRTIO_BLK_T_IN = 0
    VIRTIO_BLK_T_OUT = 1
    VIRTIO_BLK_T_FLUSH = 4
    VIRTIO_BLK_T_GET_ID = 8


class BlkStatus(IntEnum):
    VIRTIO_BLK_S_OK = 0
    VIRTIO_BLK_S_IOERR = 1
    VIRTIO_BLK_S_UNSUPP = 2


@dataclasses.dataclass(frozen=True)
class BlkOuthdr:
    """struct virtio_blk_outhdr (virtio_blk_req's device-readable head): le32 type,
    le32 reserved (legacy ioprio), le64 sector."""
    LAYOUT = struct.Struct("<IIQ")
    type: int
    reserved: int
    sector: int

    @classmethod
    def unpack(cls, raw: bytes) -> "BlkOuthdr":
        return cls(*cls.LAYOUT.unpack(raw))

    def pack(self) -> bytes:
        return self.LAYOUT.pack(self.type, self.reserved, self.sector)


OUTHDR_SIZE = BlkOuthdr.LAYOUT.size     # 16

# struct virtio_blk_config up to (not including) geometry, as the original exposed it:
# le64 capacity, le32 size_max, le32 seg_max.
CONFIG_LAYOUT = struct.Struct("<QII")


class BlockBackend(Protocol):
    size: int               # bytes; the device exposes size // 512 sectors
    read_only: bool

    def read_into(self, views: list[memoryview], offset: int) -> int:
        """Fill views from byte `offset`; returns bytes read (short only at end of file)."""

    def write_from(self, views: list[memoryview], offset: int) -> int:
        """Write views at `offset`; returns bytes written."""

    def flush(self) -> None:
        """Make written data durable (fdatasync)."""

    def device_id(self) -> bytes: ...

    def close(self) -> None: ...


# -- guest faults (each one completes the request with S_IOERR when it has a status byte) -----

class BlockRequestFault(GuestFault):
    written = 1     # the status byte


class StatusBufferMissing(GuestFault):
    def __init__(self, head: int):
        super().__init__(f"block: request {head:#x} has no device-writable status byte (5.2.6)")


class HeaderTooShort(BlockRequestFault):
    def __init__(self, head: int, length: int):
        super().__init__(f"block: request {head:#x} has {length:#x} device-readable bytes, fewer than "
                         f"the {OUTHDR_SIZE:#x}-byte header (5.2.6)")


class DataWrongDirection(BlockRequestFault):
    def __init__(self, head: int, kind: str, readable: int, writable: int):
        super().__init__(f"block: {kind} request {head:#x} has {readable:#x} readable data bytes and "
                         f"{writable:#x} writable ones; its data must go the other way (5.2.6)")


class DataNotSectorMultiple(BlockRequestFault):
    def __init__(self, head: int, length: int):
        super().__init__(f"block: request {head:#x} data length {length:#x} is not a multiple of "
                         f"{SECTOR_SIZE} (5.2.6)")


class SectorOutOfRange(BlockRequestFault):
    def __init__(self, head: int, sector: int, length: int, capacity: int):
        super().__init__(f"block: request {head:#x} for sector {sector:#x}+{length:#x} bytes reaches "
                         f"past the end of the disk ({capacity:#x} sectors) (5.2.6)")


class IdBufferTooShort(BlockRequestFault):
    def __init__(self, head: int, length: int):
        super().__init__(f"block: get-id request {head:#x} has {length} writable data bytes, fewer than the "
                         f"{VIRTIO_BLK_ID_BYTES}-byte ID string (5.2.6.1)")


class FlippedReads:
    """A test-only fault: the first byte of every read comes back inverted, i.e. a broken block
    device model for differential runs against a reference VMM to catch (harness.differential).
    Never used unless LGUEST_HARNESS_TEST_FAULT=blk-flip-reads (launcher.devspec)."""

    def __init__(self, backend: BlockBackend):
        self._backend = backend

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def read_into(self, views: list[memoryview], offset: int) -> int:
        got = self._backend.read_into(views, offset)
        first = next((view for view in views if len(view)), None)
        if got and first is not None:
            first[0] ^= 0xFF
        return got


class BlockDevice(VirtioDevice):
    device_id = DeviceId.BLOCK
    name = "block"
    QUEUES = ("requestq",)

    def __init__(self, backend: BlockBackend, *, read_only: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.backend = backend
        self.read_only = read_only or backend.read_only
        self.capacity = backend.size // SECTOR_SIZE
        seg_max = self.queues[0].max_size - 2       # two descriptors go to header and status
        self.offered = feature_bits(VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_SEG_MAX) | self.offered
        if self.read_only:
            self.offered |= feature_bits(VIRTIO_BLK_F_RO)
        self.config = bytearray(CONFIG_LAYOUT.pack(self.capacity, 0, seg_max))

    def handler(self, index: int):
        return self.serve

    def serve(self, chain: Chain) -> int:
        """One request; returns the used length (data written plus the status byte)."""
        if chain.writable_len < 1:
            raise StatusBufferMissing(chain.head)
        data_in, status = split_views(chain.writable, chain.writable_len - 1)
        status_view = status[-1]
        try:
            hdr, data_out = self._header(chain)
            status, data_len = self._execute(chain.head, hdr, data_out, data_in)
        except BlockRequestFault:
            status_view[0] = BlkStatus.VIRTIO_BLK_S_IOERR
            raise
        status_view[0] = status
        return data_len + 1

    @staticmethod
    def _header(chain: Chain) -> tuple[BlkOuthdr, list[memoryview]]:
        if chain.readable_len < OUTHDR_SIZE:
            raise HeaderTooShort(chain.head, chain.readable_len)
        # Copy the header: the guest may change the bytes under us.
        hdr = BlkOuthdr.unpack(gather(chain.readable, OUTHDR_SIZE))
        return hdr, split_views(chain.readable, OUTHDR_SIZE)[1]

    def _execute(self, head: int, hdr: BlkOuthdr, data_out, data_in) -> tuple[int, int]:
        try:
            kind = BlkType(hdr.type)
        except ValueError:
            self.log.info("unsupported request type %#x", hdr.type)
            return BlkStatus.VIRTIO_BLK_S_UNSUPP, 0
        if kind is BlkType.VIRTIO_BLK_T_IN:
            self._check_data(head, "read", hdr.sector, data_out, data_in, data=data_in)
            return self._host_io(lambda: self._read(hdr.sector, data_in), total_len(data_in))
        if kind is BlkType.VIRTIO_BLK_T_OUT:
            self._check_data(head, "write", hdr.sector, data_out, data_in, data=data_out)
            if self.read_only:
                self.log.info("write to a read-only disk refused")
                return BlkStatus.VIRTIO_BLK_S_IOERR, 0
            return self._host_io(lambda: self._write_committed(hdr.sector, data_out), 0)
        if kind is BlkType.VIRTIO_BLK_T_FLUSH:
            return self._host_io(self.backend.flush, 0)
        if data_out:
            raise DataWrongDirection(head, "get-id", total_len(data_out), total_len(data_in))
        if total_len(data_in) < VIRTIO_BLK_ID_BYTES:
            raise IdBufferTooShort(head, total_len(data_in))
        ident = self.backend.device_id()[:VIRTIO_BLK_ID_BYTES].ljust(VIRTIO_BLK_ID_BYTES, b"\0")
        return BlkStatus.VIRTIO_BLK_S_OK, scatter(data_in, ident)

    def _check_data(self, head, kind, sector, data_out, data_in, *, data) -> None:
        """Data only in the direction `kind` needs, whole sectors, inside the disk."""
        wrong = data_in if data is data_out else data_out
        if wrong:
            raise DataWrongDirection(head, kind, total_len(data_out), total_len(data_in))
        length = total_len(data)
        if length % SECTOR_SIZE:
            raise DataNotSectorMultiple(head, length)
        if sector > self.capacity or length // SECTOR_SIZE > self.capacity - sector:
            raise SectorOutOfRange(head, sector, length, self.capacity)

    def _read(self, sector: int, views) -> None:
        want = total_len(views)
        got = self.backend.read_into(views, sector * SECTOR_SIZE)
        if got != want:
            raise OSError(f"short read: {got:#x} of {want:#x} bytes at sector {sector:#x}")

    def _write(self, sector: int, views) -> None:
        want = total_len(views)
        done = self.backend.write_from(views, sector * SECTOR_SIZE)
        if done != want:
            raise OSError(f"short write: {done:#x} of {want:#x} bytes at sector {sector:#x}")

    def _write_committed(self, sector: int, views) -> None:
        """Without VIRTIO_BLK_F_FLUSH negotiated the device MUST commit a write before completing
        it (5.2.6.2: write-through); with it, the driver asks for durability with FLUSH."""
        self._write(sector, views)
        if not self.has_feature(VIRTIO_BLK_F_FLUSH):
            self.backend.flush()

    def _host_io(self, action, data_len: int) -> tuple[int, int]:
        """Host I/O errors are not the guest's fault: S_IOERR, a log line, host_errors."""
        try:
            action()
        except OSError as err:
            self.metrics.host_errors += 1
            self.log.warning("host I/O failed: %s", str(err))
            return BlkStatus.VIRTIO_BLK_S_IOERR, 0
        return BlkStatus.VIRTIO_BLK_S_OK, data_len

    def close_backend(self) -> None:
        self.backend.close()
