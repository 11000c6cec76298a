"""Block-device checks both transports' and kernels' tests share."""
import hashlib


def assert_disk_reads_and_writes(guest, disk, pattern: bytes, device: str = "/dev/vda") -> None:
    """pattern (at the start of disk, a multiple of 4 KiB) reads back in the guest; 64 KiB the
    guest writes with fsync at 1 MiB are in the host file."""
    read = guest.run(f"dd if={device} bs=4096 count={len(pattern) // 4096} 2>/dev/null | sha256sum")
    assert read.stdout.split()[0] == hashlib.sha256(pattern).hexdigest(), read.output
    wrote = guest.run("head -c 65536 /dev/urandom > /tmp/w && sha256sum /tmp/w && "
                      f"dd if=/tmp/w of={device} bs=4096 seek=256 conv=fsync,notrunc 2>/dev/null")
    assert wrote.ok, wrote.output
    with open(disk, "rb") as f:
        f.seek(1 << 20)
        assert hashlib.sha256(f.read(65536)).hexdigest() == wrote.stdout.split()[0]
