"""Differential runs (harness.differential): our device models against QEMU's, the guest's view
compared command by command; and the proof that a broken model is caught, with a readable diff.

Each differential test boots its guest on kvm and on qemu side by side (the kvm boot sets the
pace: ~20 s on kvm_pvm, QEMU-TCG ~2 s)."""
import hashlib
import random
from pathlib import Path

import pytest

from harness.differential import DifferentialMismatch
from launcher.devspec import TEST_FAULT_ENV

pytestmark = [pytest.mark.kvm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
DATA = random.Random(17).randbytes(1 << 20)         # the same on both sides, for every run
WRITTEN = b"lguest-harness differential\n" * 600      # 16,800 bytes: not a block multiple
EVERY_BYTE = bytes(range(256)) * 32                   # small: kvm_pvm moves ~10-60 KB/s over hvc0
MIB = 1 << 20


@pytest.mark.differential(block=[DATA, 16, 2], mem=64)
def test_block_data_read_back_writes_flush_and_the_end_agree(differential):
    d = differential
    d.run("cat /sys/block/vda/size /sys/block/vda/ro /sys/block/vdb/size /sys/block/vdc/size")
    d.run("cat /sys/block/vda/queue/write_cache")                 # FLUSH offered: "write back" on both
    d.run("dd if=/dev/vda bs=4096 count=16 iflag=direct 2>/dev/null | sha256sum")   # data read back
    d.run("dd if=/dev/vda bs=512 skip=3 count=7 iflag=direct 2>/dev/null | od -An -tx1 | sed -n 1,4p")   # sed reads it all: no EPIPE
    d.run(f"dd if=/dev/vdb bs=4096 skip={16 * MIB // 4096} count=1 iflag=direct 2>/dev/null | wc -c")  # at the end
    # Written with O_DIRECT and fsync (a FLUSH), read back in the guest and found in the host file.
    d.run("cat > /tmp/w; dd if=/tmp/w of=/dev/vdb bs=4096 seek=16 conv=fsync,notrunc 2>/dev/null; echo $?",
          input=WRITTEN)
    d.run(f"dd if=/dev/vdb bs=4096 skip=16 count=5 iflag=direct 2>/dev/null | head -c {len(WRITTEN)} | sha256sum")
    for disks in d.disks.values():
        with open(disks[1], "rb") as disk:
            disk.seek(16 * 4096)
            assert disk.read(len(WRITTEN)) == WRITTEN
    assert hashlib.sha256(DATA[:65536]).hexdigest() in d.run("head -c 65536 /dev/vda | sha256sum").stdout


@pytest.mark.differential(block=[2], mem=64)
def test_a_read_past_the_end_of_a_shrunk_file_is_a_known_difference(differential):
    # The host cuts each side's 2 MiB file to 1 MiB under the guest.  Our device answers the read
    # beyond the end with VIRTIO_BLK_S_IOERR (EIO in the guest); QEMU's raw file driver zero-fills
    # it.  The differential run must say so, readably, and the files must not grow.
    past = f"dd if=/dev/vda of=/dev/null bs=4096 skip={MIB // 4096 + 8} count=1 iflag=direct; echo status=$?"
    differential.run(past)                                          # both still full size: no error
    for disks in differential.disks.values():
        with open(disks[0], "r+b") as disk:
            disk.truncate(MIB)
    with pytest.raises(DifferentialMismatch) as caught:
        differential.run(past)
    said = str(caught.value)
    assert "differs between kvm and qemu (after 1 command(s) that agreed)" in said
    assert "-status=1" in said and "+status=0" in said              # dd failed on kvm only,
    assert "-dd: /dev/vda: Input/output error" in said              # with EIO
    assert all(disks[0].stat().st_size == MIB for disks in differential.disks.values())


@pytest.mark.differential(rng=True, mem=64)
def test_console_bytes_both_ways_and_rng_agree(differential):
    d = differential
    stored = d.run("cat > /tmp/all; sha256sum < /tmp/all; wc -c < /tmp/all", input=EVERY_BYTE)   # host -> guest
    assert stored.stdout.split() == [hashlib.sha256(EVERY_BYTE).hexdigest(), "-", str(len(EVERY_BYTE))]
    assert d.run("cat /tmp/all").stdout_bytes == EVERY_BYTE         # guest -> host, byte exact on both
    d.run(r"printf 'tab\there\r\nCR\rnul\000end\n'; printf 'to stderr\n' >&2; exit 3")
    d.run("cat /sys/class/misc/hw_random/rng_current")
    d.run("head -c 4096 /dev/hwrng | wc -c")
    d.run("[ $(head -c 4096 /dev/hwrng | od -An -v -tu1 | tr -s ' ' '\\n' | sort -un | wc -l) -gt 200 ] "
          "&& echo most byte values seen")


def test_a_broken_block_model_is_caught_with_a_readable_diff(pytester, guest_kernel, monkeypatch):
    monkeypatch.setenv(TEST_FAULT_ENV, "blk-flip-reads")     # our block device inverts each read's first byte
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    pytester.makepyfile(test_user="""
        import pytest

        @pytest.mark.differential(block=[bytes(range(256)) * 16])
        def test_reads_agree(differential):
            differential.run("cat /sys/block/vda/size")
            differential.run("dd if=/dev/vda bs=4096 count=1 iflag=direct 2>/dev/null | od -An -tx1 | sed -n 1,2p")
    """)
    result = pytester.runpytest_subprocess(f"--guest-kernel={guest_kernel}", timeout=900)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*differential run: `dd if=/dev/vda bs=4096 count=1*` differs between kvm and qemu "
        "(after 1 command(s) that agreed)*",
        "*stdout differs (--- kvm, +++ qemu):*",
        "*- ff 01 02 03 04*", "*+ 00 01 02 03 04*",
        "*first difference at byte 1 (kvm: 66 66*; qemu: 30 30*",
        "*guest serial log (kvm)*", "*guest serial log (qemu)*"])
