"""bzImage: the setup header, the protected-mode code, and the compressed vmlinux inside it.

Two ways to use one (the original Launcher's load_bzimage did the first):
  * protected-mode: the code after the setup sectors goes at 1 MiB and runs from
    code32_start; it decompresses itself in the guest (slow where kernel code is emulated);
  * extraction: payload_offset/payload_length (protocol 2.08+) locate the compressed
    vmlinux inside that code; we decompress it here and load the ELF directly.
"""
from __future__ import annotations

from dataclasses import dataclass

from launcher.loader import bootparams
from launcher.loader.decompress import decompress
from launcher.loader.errors import (
    BzImageNoMagic, BzImageTooOld, BzImageTruncated, EntryOutsideMemory, SegmentOutsideMemory,
)
from launcher.loader.result import KernelKind, LoadResult, Segment

SECTOR = 512
PROTECTED_MODE_BASE = 0x100000
PAYLOAD_PROTOCOL = 0x208


def is_bzimage(data: bytes) -> bool:
    return len(data) >= 0x206 and bootparams.get(data, "header") == bootparams.HDRS_MAGIC


@dataclass(frozen=True)
class BzImage:
    data: bytes
    setup_sects: int
    version: int
    code32_start: int

    @property
    def pm_offset(self) -> int:
        """File offset of the protected-mode code: after the boot sector and setup sectors."""
        return (self.setup_sects + 1) * SECTOR

    @property
    def setup_header(self) -> bytes:
        return self.data[bootparams.SETUP_HEADER_START:bootparams.SETUP_HEADER_END]

    def pm_code(self) -> memoryview:
        return memoryview(self.data)[self.pm_offset:]

    def payload(self) -> bytes:
        if self.version < PAYLOAD_PROTOCOL:
            raise BzImageTooOld(
                f"boot protocol {self.version >> 8}.{self.version & 0xff:02d} has no payload_offset; "
                f"extraction needs 2.08 or later")
        offset = bootparams.get(self.data, "payload_offset")
        length = bootparams.get(self.data, "payload_length")
        start = self.pm_offset + offset
        if length == 0 or start + length > len(self.data):
            raise BzImageTruncated(
                f"payload {offset:#x}+{length:#x} after the protected-mode code at {self.pm_offset:#x} "
                f"lies outside the {len(self.data):#x}-byte file")
        return self.data[start:start + length]


def parse(data: bytes) -> BzImage:
    if len(data) < bootparams.SETUP_HEADER_END or bootparams.get(data, "header") != bootparams.HDRS_MAGIC:
        raise BzImageNoMagic('not a bzImage: no "HdrS" magic at offset 0x202')
    # setup_sects == 0 means 4 (boot.rst: "for backwards compatibility").
    setup_sects = bootparams.get(data, "setup_sects") or 4
    image = BzImage(data, setup_sects, bootparams.get(data, "version"), bootparams.get(data, "code32_start"))
    if image.pm_offset >= len(data):
        raise BzImageTruncated(
            f"{setup_sects} setup sectors end at {image.pm_offset:#x}, past the {len(data):#x}-byte file")
    return image


def load_protected_mode(memory, image: BzImage) -> LoadResult:
    code = image.pm_code()
    end = PROTECTED_MODE_BASE + code.nbytes
    if end > memory.size:
        raise SegmentOutsideMemory(
            f"bzImage protected-mode code ({code.nbytes:#x} bytes at 1 MiB) does not fit in guest memory "
            f"(0..{memory.size:#x})")
    if not 0 <= image.code32_start < memory.size:
        raise EntryOutsideMemory(f"code32_start {image.code32_start:#x} is outside guest memory")
    memory.write(PROTECTED_MODE_BASE, code)
    seg = Segment(PROTECTED_MODE_BASE, code.nbytes, code.nbytes)
    return LoadResult(image.code32_start, (seg,), KernelKind.BZIMAGE, setup_header=image.setup_header)


def extract_vmlinux(image: BzImage) -> tuple[str, bytes]:
    """(compressor, ELF vmlinux bytes) from the bzImage's payload."""
    return decompress(image.payload())
