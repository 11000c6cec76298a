"""Fuzz-like requests against virtio-blk (5.2.6): any chain a guest can post gets exactly one
used entry and, when it has a status byte, a valid status; the disk is never touched outside
its bounds and never changes size; only a successful T_OUT changes its bytes."""
import struct

from hypothesis import example, given, settings, strategies as st

from harness.fakes.backends import MemoryDisk
from harness.fakes.backends_bench import DeviceBench
from launcher.devices.block import BlkStatus, BlkType, BlockDevice

SECTORS = 16
TYPES = st.one_of(st.sampled_from([int(t) for t in BlkType]), st.integers(0, 2**32 - 1))
SECTOR = st.one_of(st.integers(0, SECTORS + 2), st.integers(0, 2**64 - 1))
LENGTHS = st.lists(st.sampled_from([0, 1, 15, 16, 100, 512, 1024, 513]), max_size=3)


class BoundsCheckedDisk(MemoryDisk):
    def read_into(self, views, offset):
        assert 0 <= offset and offset + sum(len(v) for v in views) <= self.size, "read out of bounds"
        return super().read_into(views, offset)

    def write_from(self, views, offset):
        assert 0 <= offset and offset + sum(len(v) for v in views) <= self.size, "write out of bounds"
        return super().write_from(views, offset)


@settings(max_examples=300, deadline=None)
@given(kind=TYPES, sector=SECTOR, hdr_cut=st.sampled_from([16, 16, 16, 0, 8, 15]),
       data_out=LENGTHS, writable=LENGTHS)
@example(kind=1, sector=SECTORS - 1, hdr_cut=16, data_out=[1024], writable=[1])
@example(kind=0, sector=0, hdr_cut=16, data_out=[], writable=[])
def test_any_request_is_answered_and_disk_stays_in_bounds(kind, sector, hdr_cut, data_out, writable):
    disk = BoundsCheckedDisk(SECTORS * 512, data=bytes(range(256)) * 2 * SECTORS)
    before = bytes(disk.data)
    readable = [struct.pack("<IIQ", kind, 0, sector)[:hdr_cut]] if hdr_cut else []
    readable += [b"\xab" * n for n in data_out]
    if not readable and not writable:
        writable = [1]
    with DeviceBench(BlockDevice(disk, strict=False)) as bench:
        bench.negotiate()
        drv = bench.driver(0)
        posted = drv.posted(drv.add(readable, writable))
        drv.kick()
        bench.process(0)
        [(_, used_len, _)] = drv.reap()
        assert used_len <= sum(writable)
        if sum(writable):
            last_addr, last_len = [r for r in posted.writable if r[1]][-1]
            status = bench.memory.read_u8(last_addr + last_len - 1)
            assert status in {s.value for s in BlkStatus}
            assert used_len >= 1
        else:
            status = None
            assert used_len == 0
    assert len(disk.data) == len(before)
    if disk.data != before:
        assert kind == BlkType.VIRTIO_BLK_T_OUT and status == BlkStatus.VIRTIO_BLK_S_OK
