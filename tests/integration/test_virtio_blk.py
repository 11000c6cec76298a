"""virtio-blk on virtio-mmio in the recipe guest: size, data both ways, end of disk, read-only, ext4."""
import hashlib

import pytest

from tests.integration.virtio_guest import (
    BACKENDS, RW_DATA, RW_SIZE, SHRINK_SIZE, SHRUNK_SIZE, file_sha256, sha256, shared_guest,
)

pytestmark = [pytest.mark.kvm, pytest.mark.slow]


@pytest.fixture(scope="module", params=BACKENDS)
def vg(request, tmp_path_factory):
    return shared_guest(request, tmp_path_factory, request.param)


def test_disk_is_dev_vda_with_the_files_size(vg):
    assert vg.check("cat /sys/block/vda/size").strip() == str(RW_SIZE // 512)
    assert vg.check("cat /sys/block/vda/ro").strip() == "0"


def test_host_written_data_reads_back_in_the_guest(vg):
    # 1 MiB from offset 64 KiB: 256 blocks of 4 KiB after skipping 16.
    start, length = 64 << 10, 1 << 20
    want = sha256(vg.rw_disk.read_bytes()[start:start + length])
    out = vg.check("dd if=/dev/vda of=/tmp/r bs=4096 skip=16 count=256 2>/dev/null && sha256sum /tmp/r")
    assert out.split()[0] == want
    md5 = vg.check(f"dd if=/dev/vda of=/tmp/r bs=512 count={RW_DATA // 512} 2>/dev/null && md5sum /tmp/r")
    assert md5.split()[0] == hashlib.md5(vg.rw_disk.read_bytes()[:RW_DATA]).hexdigest()
    vg.check("rm /tmp/r")


def test_guest_written_and_synced_data_is_in_the_host_file(vg):
    # 256 KiB of guest randomness at offset 8 MiB (4 KiB block 2048), written with O_DIRECT + fsync.
    out = vg.check("head -c 262144 /dev/urandom > /tmp/w && sha256sum /tmp/w && "
                   "dd if=/tmp/w of=/dev/vda bs=4096 seek=2048 conv=fsync,notrunc 2>/dev/null && sync")
    guest_sha = out.split()[0]
    with open(vg.rw_disk, "rb") as f:
        f.seek(8 << 20)
        assert sha256(f.read(262144)) == guest_sha
    assert vg.rw_disk.stat().st_size == RW_SIZE


def test_read_past_the_end_of_the_host_file_is_an_io_error(vg):
    # The guest sized /dev/vdc at 1 MiB; the host now cuts the file to 512 KiB.  A read the
    # host cannot serve must fail in the guest with EIO, and the file must not grow or change.
    # QEMU, the reference, chooses otherwise: its raw file driver zero-fills a read past the end
    # of a regular file (a known difference, asserted so a change on either side shows).
    assert vg.check("cat /sys/block/vdc/size").strip() == str(SHRINK_SIZE // 512)
    with open(vg.shrink_disk, "r+b") as f:
        f.truncate(SHRUNK_SIZE)
    before = file_sha256(vg.shrink_disk)
    past = f"dd if=/dev/vdc bs=4096 skip={SHRUNK_SIZE // 4096 + 8} count=1 iflag=direct"
    if vg.backend == "qemu":
        assert set(vg.check(f"{past} 2>/dev/null | od -An -v -tx1").split()) == {"00"}
    else:
        result = vg.run(f"{past} of=/dev/null")
        assert result.status != 0, result.output
        assert "I/O error" in result.output or "Input/output error" in result.output, result.output
    # Below the new end still reads.
    vg.check("dd if=/dev/vdc of=/dev/null bs=4096 count=1 iflag=direct")
    assert vg.shrink_disk.stat().st_size == SHRUNK_SIZE
    assert file_sha256(vg.shrink_disk) == before


def test_read_only_disk_refuses_writes(vg):
    before = file_sha256(vg.ro_disk)
    assert vg.check("cat /sys/block/vdd/ro").strip() == "1"
    result = vg.run("dd if=/dev/zero of=/dev/vdd bs=4096 count=1 conv=fsync")
    assert result.status != 0, result.output
    vg.check("dd if=/dev/vdd of=/dev/null bs=4096 count=1")      # reading is fine
    assert file_sha256(vg.ro_disk) == before


def test_ext4_image_made_on_the_host_mounts_and_reads_back(vg):
    vg.check("mkdir -p /mnt/fs && mount -t ext4 -o ro /dev/vdb /mnt/fs")
    try:
        assert vg.check("cat /mnt/fs/hello.txt") == vg.ext4_files["hello.txt"].decode()
        assert vg.check("cat /mnt/fs/sub/deep.txt") == "nested\n"
        assert vg.check("sha256sum /mnt/fs/blob.bin").split()[0] == sha256(vg.ext4_files["blob.bin"])
    finally:
        vg.run("umount /mnt/fs")
