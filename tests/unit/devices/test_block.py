"""virtio-blk (virtio 1.x 5.2) driven through the fake guest driver."""
import os
import struct

import pytest

from harness.fakes.backends import FaultyDisk, MemoryDisk
from harness.fakes.backends_bench import DeviceBench
from launcher.devices.base import feature_bits
from launcher.devices.block import (
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, BlkOuthdr, BlkStatus, BlkType,
    BlockDevice, DataNotSectorMultiple, DataWrongDirection, HeaderTooShort, SectorOutOfRange,
    IdBufferTooShort, StatusBufferMissing,
)
from launcher.io.block_file import FileBlockBackend

T_IN, T_OUT, T_FLUSH, T_GET_ID = (BlkType.VIRTIO_BLK_T_IN, BlkType.VIRTIO_BLK_T_OUT,
                                  BlkType.VIRTIO_BLK_T_FLUSH, BlkType.VIRTIO_BLK_T_GET_ID)
S_OK, S_IOERR, S_UNSUPP = (BlkStatus.VIRTIO_BLK_S_OK, BlkStatus.VIRTIO_BLK_S_IOERR,
                           BlkStatus.VIRTIO_BLK_S_UNSUPP)
SECTORS = 8


def hdr(kind, sector=0) -> bytes:
    return BlkOuthdr(int(kind), 0, sector).pack()


def bench_for(backend, strict=True, **kw) -> DeviceBench:
    bench = DeviceBench(BlockDevice(backend, strict=strict, **kw))
    bench.negotiate()
    return bench


def request_data(bench, readable, writable):
    """Post one chain, serve it threadlessly: (used len, status byte or None, data buffers)."""
    drv = bench.driver(0)
    posted = drv.posted(drv.add(readable, writable))
    drv.kick()
    bench.process(0)
    [(_, length, _)] = drv.reap()
    ranges = posted.writable
    status = bench.memory.read_u8(ranges[-1][0] + ranges[-1][1] - 1) if ranges else None
    data = b"".join(bench.memory.read(a, n) for a, n in ranges)[:-1]
    return length, status, data


def request(bench, readable, writable):
    """(used len, status byte) of one request."""
    return request_data(bench, readable, writable)[:2]


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(range(256)) * 2 * SECTORS)
    return path


@pytest.fixture
def fdatasync_calls(monkeypatch):
    calls = []
    real = os.fdatasync

    def spy(fd):
        calls.append(fd)
        return real(fd)

    monkeypatch.setattr(os, "fdatasync", spy)
    return calls


def test_config_space_has_capacity_and_seg_max():
    dev = BlockDevice(MemoryDisk(SECTORS * 512))
    capacity, size_max, seg_max = struct.unpack("<QII", dev.config)
    assert (capacity, size_max, seg_max) == (SECTORS, 0, dev.QUEUE_SIZE - 2)
    assert dev.offered == feature_bits(VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_SEG_MAX)
    assert dev.device_id == 2


def test_write_read_back_flush_reaches_fdatasync(image, fdatasync_calls):
    backend = FileBlockBackend(image)
    with bench_for(backend) as bench:
        payload = os.urandom(1024)
        assert request(bench, [hdr(T_OUT, 3), payload[:700], payload[700:]], [1]) == (1, S_OK)
        assert request_data(bench, [hdr(T_IN, 3)], [512, 512, 1]) == (1025, S_OK, payload)
        assert fdatasync_calls == []
        assert request(bench, [hdr(T_FLUSH)], [1]) == (1, S_OK)
        assert fdatasync_calls == [backend.fd]
    assert image.read_bytes()[3 * 512:5 * 512] == payload


@pytest.mark.parametrize("sector,nbytes", [(SECTORS - 1, 1024), (SECTORS, 512), (2**63, 512),
                                           (2**64 - 1, 512)])
def test_write_past_end_refused_file_untouched(image, sector, nbytes):
    before = image.read_bytes()
    with bench_for(FileBlockBackend(image), strict=False) as bench:
        faults = bench.device.metrics.guest_faults
        assert request(bench, [hdr(T_OUT, sector), b"\xee" * nbytes], [1]) == (1, S_IOERR)
        assert bench.device.metrics.guest_faults == faults + 1
    assert image.stat().st_size == len(before)
    assert image.read_bytes() == before


def test_read_past_end_refused(image):
    with bench_for(FileBlockBackend(image), strict=False) as bench:
        assert request(bench, [hdr(T_IN, SECTORS - 1)], [1024, 1]) == (1, S_IOERR)


def test_past_end_raises_in_strict_mode(image):
    before = image.read_bytes()
    with bench_for(FileBlockBackend(image)) as bench:
        bench.driver(0).add([hdr(T_OUT, SECTORS), b"x" * 512], [1])
        bench.kick(0)
        with pytest.raises(SectorOutOfRange):
            bench.process(0)
        # The chain was still completed with S_IOERR before the raise.
        assert bench.driver(0).reap()[0][1:] == (1, bytes([S_IOERR]))
    assert image.read_bytes() == before


def test_last_sector_is_inside():
    disk = MemoryDisk(SECTORS * 512)
    with bench_for(disk) as bench:
        assert request(bench, [hdr(T_OUT, SECTORS - 1), b"z" * 512], [1]) == (1, S_OK)
    assert disk.data[-512:] == b"z" * 512


def test_unknown_type_is_unsupported():
    with bench_for(MemoryDisk()) as bench:
        assert request(bench, [hdr(0x1234)], [1]) == (1, S_UNSUPP)
        assert bench.device.metrics.guest_faults == 0


def test_get_id():
    with bench_for(MemoryDisk(ident=b"serial-42")) as bench:
        result = request_data(bench, [hdr(T_GET_ID)], [20, 1])
    assert result == (21, S_OK, b"serial-42".ljust(20, b"\0"))


@pytest.mark.parametrize("room", [1, 19])
def test_get_id_into_a_buffer_shorter_than_20_bytes_is_refused(room):
    with bench_for(MemoryDisk(ident=b"serial-42"), strict=False) as bench:
        length, status, data = request_data(bench, [hdr(T_GET_ID)], [room, 1])
        assert (length, status) == (1, S_IOERR) and data == bytes(room)     # no ID cut short
        assert bench.device.metrics.guest_faults == 1


def test_get_id_short_buffer_names_the_rule():
    with bench_for(MemoryDisk()) as bench, pytest.raises(IdBufferTooShort, match=r"fewer than the 20-byte ID .*5\.2\.6\.1"):
        request(bench, [hdr(T_GET_ID)], [19, 1])


def test_writes_are_committed_before_completion_without_negotiated_flush(image, fdatasync_calls):
    backend = FileBlockBackend(image)
    bench = DeviceBench(BlockDevice(backend, strict=True))
    bench.negotiate(accepted=bench.device.offered & ~feature_bits(VIRTIO_BLK_F_FLUSH))
    with bench:
        assert request(bench, [hdr(T_OUT, 1), b"w" * 512], [1]) == (1, S_OK)
        assert fdatasync_calls == [backend.fd]              # write-through (5.2.6.2)
        assert request_data(bench, [hdr(T_IN, 1)], [512, 1])[1] == S_OK
        assert fdatasync_calls == [backend.fd]              # reads are not synced


def test_get_id_of_file_is_its_name(image):
    with bench_for(FileBlockBackend(image)) as bench:
        _, _, data = request_data(bench, [hdr(T_GET_ID)], [20, 1])
    assert data[:8] == b"disk.img"


def test_read_only_offers_ro_and_refuses_writes(image):
    before = image.read_bytes()
    with bench_for(FileBlockBackend(image, read_only=True)) as bench:
        assert bench.device.offered >> VIRTIO_BLK_F_RO & 1
        assert request(bench, [hdr(T_OUT, 0), b"w" * 512], [1]) == (1, S_IOERR)
        assert request_data(bench, [hdr(T_IN, 0)], [512, 1]) == (513, S_OK, before[:512])
    assert image.read_bytes() == before


def test_header_split_across_descriptors_is_accepted():
    disk = MemoryDisk()
    with bench_for(disk) as bench:
        raw = hdr(T_OUT, 1)
        assert request(bench, [raw[:5], raw[5:] + b"q" * 512], [1]) == (1, S_OK)
    assert disk.data[512:1024] == b"q" * 512


# -- hostile requests -------------------------------------------------------------------------

HOSTILE = [
    ("header too short", [b"\0" * 8], [1], HeaderTooShort, (1, S_IOERR)),
    ("no readable header", [], [512, 1], HeaderTooShort, (1, S_IOERR)),
    ("status missing", [hdr(T_IN)], [], StatusBufferMissing, (0, None)),
    ("read with readable data", [hdr(T_IN), b"x" * 512], [512, 1], DataWrongDirection, (1, S_IOERR)),
    ("write with writable data", [hdr(T_OUT)], [512, 1], DataWrongDirection, (1, S_IOERR)),
    ("get-id with readable data", [hdr(T_GET_ID), b"x"], [20, 1], DataWrongDirection, (1, S_IOERR)),
    ("not a sector multiple", [hdr(T_OUT), b"x" * 100], [1], DataNotSectorMultiple, (1, S_IOERR)),
]


@pytest.mark.parametrize("name,readable,writable,error,result", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_request_gets_device_error(name, readable, writable, error, result):
    disk = MemoryDisk()
    before = bytes(disk.data)
    with bench_for(disk, strict=False) as bench:
        assert request(bench, readable, writable) == result
        assert bench.device.metrics.guest_faults == 1
        # The device keeps serving after the fault.
        assert request(bench, [hdr(T_FLUSH)], [1]) == (1, S_OK)
    assert bytes(disk.data) == before


@pytest.mark.parametrize("name,readable,writable,error,result", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_request_raises_typed_error_in_strict_mode(name, readable, writable, error, result):
    with bench_for(MemoryDisk(), strict=True) as bench:
        bench.driver(0).add(readable, writable)
        bench.kick(0)
        with pytest.raises(error):
            bench.process(0)


# -- host faults ------------------------------------------------------------------------------

def test_injected_eio_gives_ioerr_and_counts_host_error():
    disk = FaultyDisk(MemoryDisk(), eio_sectors={2})
    with bench_for(disk) as bench:
        assert request(bench, [hdr(T_IN, 1)], [1024, 1]) == (1, S_IOERR)
        assert request(bench, [hdr(T_OUT, 2), b"x" * 512], [1]) == (1, S_IOERR)
        assert request(bench, [hdr(T_IN, 3)], [512, 1])[1] == S_OK
        assert bench.device.metrics.host_errors == 2
        assert bench.device.metrics.guest_faults == 0


def test_short_read_gives_ioerr():
    disk = FaultyDisk(MemoryDisk(), short_read_sectors={0})
    with bench_for(disk) as bench:
        assert request(bench, [hdr(T_IN, 0)], [1024, 1]) == (1, S_IOERR)
        assert bench.device.metrics.host_errors == 1


def test_failed_flush_gives_ioerr():
    inner = MemoryDisk()
    with bench_for(FaultyDisk(inner, fail_flush=True)) as bench:
        assert request(bench, [hdr(T_FLUSH)], [1]) == (1, S_IOERR)
    assert inner.flushes == 0


def test_flush_reaches_memory_disk():
    disk = MemoryDisk()
    with bench_for(disk) as bench:
        request(bench, [hdr(T_FLUSH)], [1])
        request(bench, [hdr(T_FLUSH)], [1])
    assert disk.flushes == 2


def test_threaded_block_requests(image, fdatasync_calls):
    bench = DeviceBench(BlockDevice(FileBlockBackend(image), strict=True), threads=True)
    with bench:
        bench.negotiate()
        drv = bench.driver(0)
        drv.add([hdr(T_OUT, 0), b"T" * 512], [1])
        drv.add([hdr(T_FLUSH)], [1])
        drv.kick()
        got = bench.wait_used(0, 2)
        assert [g[1:] for g in got] == [(1, bytes([S_OK]))] * 2
        bench.trigger.wait_for(0)
        assert len(fdatasync_calls) == 1
    assert image.read_bytes()[:512] == b"T" * 512
    assert bench.workers.errors == []
