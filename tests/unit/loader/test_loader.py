"""Loader: every header check, every compression format, and nothing written on refusal."""
import struct

import pytest

from launcher.loader import errors as E
from launcher.loader import KernelKind, kernel_kind, load_initrd, load_kernel, load_kernel_bytes
from launcher.loader.decompress import MAGICS
from launcher.memory import GuestMemory
from tests.unit.loader.images import COMPRESSORS, ET_DYN, make_bzimage, make_elf

MEM = 4 << 20


@pytest.fixture
def mem():
    with GuestMemory(MEM) as m:
        yield m


@pytest.mark.parametrize("bits,kind", [(32, KernelKind.ELF32), (64, KernelKind.ELF64)])
def test_elf_segments_land_at_p_paddr_with_zeroed_bss(mem, bits, kind):
    mem.fill(0x200000, 0x100, 0xAA)
    image = make_elf(bits, [(0x100000, b"\x11" * 0x20, 0x20), (0x200000, b"\x22" * 0x10, 0x100)], entry=0x100010)
    result = load_kernel_bytes(mem, image)
    assert result.kind is kind and result.entry == 0x100010
    assert [(s.paddr, s.filesz, s.memsz) for s in result.segments] == [(0x100000, 0x20, 0x20), (0x200000, 0x10, 0x100)]
    assert mem.read(0x100000, 0x20) == b"\x11" * 0x20
    assert mem.read(0x200000, 0x100) == b"\x22" * 0x10 + bytes(0xF0)
    assert result.end == 0x200100


@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("kwargs,error,message", [
    ({"e_type": ET_DYN}, E.ElfNotExecutable, "must be ET_EXEC"),
    ({"machine": 40}, E.ElfWrongClass, "e_machine"),
    ({"phentsize": 12}, E.ElfBadPhentsize, "e_phentsize 0xc"),
    ({"phnum": 0}, E.ElfBadPhnum, "e_phnum 0"),
    ({"segments": [(MEM - 0x10, b"x" * 0x20, 0x20)]}, E.SegmentOutsideMemory, "does not fit in guest memory"),
    ({"segments": [(0x100000, b"x" * 0x20, 0x10)]}, E.SegmentSizeInverted, "p_filesz 0x20 > p_memsz 0x10"),
    ({"segments": [], "extra_note": True}, E.ElfNoLoadSegment, "no PT_LOAD"),
    ({"entry": MEM + 0x1000}, E.EntryOutsideMemory, "e_entry"),
])
def test_elf_header_rules(mem, bits, kwargs, error, message):
    mem.fill(0x100000, 0x40, 0x77)
    with pytest.raises(error, match=message):
        load_kernel_bytes(mem, make_elf(bits, **kwargs))
    assert mem.read(0x100000, 0x40) == b"\x77" * 0x40, "a refused kernel must not be written"


def test_elf_phnum_upper_bound(mem):
    with pytest.raises(E.ElfBadPhnum, match=r"outside 1\.\.1170"):
        load_kernel_bytes(mem, make_elf(64, phnum=1171))


def test_elf_class_must_match_machine(mem):
    image = bytearray(make_elf(64))
    struct.pack_into("<H", image, 18, 3)  # EM_386 in a 64-bit file
    with pytest.raises(E.ElfWrongClass, match="ELFCLASS64 kernels must have e_machine EM_X86_64"):
        load_kernel_bytes(mem, bytes(image))


def test_segment_past_end_of_file(mem):
    image = make_elf(64, [(0x100000, b"y" * 0x40, 0x40)])
    with pytest.raises(E.SegmentOutsideFile, match="runs past the end of the file"):
        load_kernel_bytes(mem, image[:-0x30])


def test_garbage_elf_is_malformed_not_a_traceback(mem):
    with pytest.raises(E.ElfMalformed):
        load_kernel_bytes(mem, b"\x7fELF\x09" + bytes(60))


def test_neither_elf_nor_bzimage(mem):
    with pytest.raises(E.NotAKernel, match="neither an ELF vmlinux"):
        load_kernel_bytes(mem, b"#!/bin/sh\n" + bytes(0x300))


def test_unreadable_kernel(mem, tmp_path):
    with pytest.raises(E.KernelUnreadable, match="cannot read kernel"):
        load_kernel(mem, tmp_path / "missing")


@pytest.mark.parametrize("compression", sorted(COMPRESSORS))
def test_bzimage_payload_is_extracted_and_loaded(mem, compression):
    vmlinux = make_elf(64, [(0x100000, bytes(range(256)) * 64, 0x4000)], entry=0x100000)
    result = load_kernel_bytes(mem, make_bzimage(vmlinux, compression))
    assert result.kind is KernelKind.BZIMAGE_ELF64 and result.compression == compression
    assert mem.read(0x100000, 0x4000) == bytes(range(256)) * 64
    assert result.setup_header[0x202 - 0x1F1:0x206 - 0x1F1] == b"HdrS"


def test_lz4_legacy_spans_several_blocks(mem):
    big = bytes(range(256)) * (9 << 12)  # 9 MiB: two 8 MiB legacy blocks
    from launcher.loader.decompress import decompress
    assert decompress(COMPRESSORS["lz4"](big) + struct.pack("<I", len(big))) == ("lz4", big)


def test_bzimage_protected_mode_load_like_the_original(mem):
    image = make_bzimage(make_elf(32), setup_sects=0, code32_start=0x100000)
    result = load_kernel_bytes(mem, image, prefer_elf=False)
    assert result.kind is KernelKind.BZIMAGE and result.entry == 0x100000
    assert mem.read(0x100000, 0x40) == b"\xf4" * 0x40  # setup_sects 0 means 4: code at (4+1)*512


@pytest.mark.parametrize("kwargs,error,message", [
    ({"version": 0x207}, E.BzImageTooOld, "needs 2.08"),
    ({"payload": b"\x00\x01\x02\x03payload"}, E.PayloadUnknownFormat, "no known compressor"),
    ({"payload": b"BZh91AY&SY"}, E.PayloadUnknownFormat, "bzip2 payloads are not supported"),
    ({"payload": b"\x1f\x8b\x08\x00garbage"}, E.PayloadCorrupt, "gzip"),
    ({"payload": b"\x02\x21\x4c\x18\xff\xff\x00\x00\x01\x02\x03\x04"}, E.PayloadCorrupt, "runs past the payload"),
    ({"payload": b"\x28\xb5\x2f\xfd\x00\x00"}, E.PayloadCorrupt, "zstd"),
])
def test_bzimage_rules(mem, kwargs, error, message):
    with pytest.raises(error, match=message):
        load_kernel_bytes(mem, make_bzimage(make_elf(64), **kwargs))


def test_setup_sectors_past_the_file(mem):
    with pytest.raises(E.BzImageTruncated, match="4 setup sectors end at 0xa00, past the 0x900-byte file"):
        load_kernel_bytes(mem, make_bzimage(make_elf(64))[:0x900])


def test_payload_length_past_the_file(mem):
    image = bytearray(make_bzimage(make_elf(64)))
    struct.pack_into("<I", image, 0x24C, 0x10000000)
    with pytest.raises(E.BzImageTruncated, match="outside the"):
        load_kernel_bytes(mem, bytes(image))


def test_every_supported_magic_has_a_compressor():
    assert {name for _, name in MAGICS} - set(COMPRESSORS) == {"bzip2", "lzo"}


def test_initrd_is_page_aligned_at_the_top(mem, tmp_path):
    path = tmp_path / "initrd"
    path.write_bytes(b"\x42" * 5000)
    placed = load_initrd(mem, path, kernel_end=0x200000)
    assert placed.addr == MEM - 0x2000 and placed.size == 5000
    assert mem.read(placed.addr, 5000) == b"\x42" * 5000


def test_initrd_that_does_not_fit(mem, tmp_path):
    path = tmp_path / "initrd"
    path.write_bytes(bytes(MEM))
    with pytest.raises(E.InitrdTooLarge, match="does not fit"):
        load_initrd(mem, path, kernel_end=0x200000)


def test_initrd_missing_or_empty(mem, tmp_path):
    with pytest.raises(E.InitrdUnreadable, match="cannot read initrd"):
        load_initrd(mem, tmp_path / "nope", kernel_end=0)
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(E.InitrdUnreadable, match="is empty"):
        load_initrd(mem, tmp_path / "empty", kernel_end=0)


def _with_xloadflags(image: bytes, flags: int) -> bytes:
    image = bytearray(image)
    struct.pack_into("<H", image, 0x236, flags)
    return bytes(image)


@pytest.mark.parametrize("image,prefer_elf,kind", [
    (make_elf(32), True, KernelKind.ELF32),
    (make_elf(64), True, KernelKind.ELF64),
    (_with_xloadflags(make_bzimage(make_elf(64), version=0x20F), 1), True, KernelKind.BZIMAGE_ELF64),
    (_with_xloadflags(make_bzimage(make_elf(32), version=0x20F), 0), True, KernelKind.BZIMAGE_ELF32),
    (make_bzimage(make_elf(64), version=0x20A), True, None),      # before 2.12 the headers cannot tell
    (make_bzimage(make_elf(64)), False, KernelKind.BZIMAGE),
])
def test_kernel_kind_from_the_headers_alone(image, prefer_elf, kind):
    assert kernel_kind(image, prefer_elf=prefer_elf) is kind


def test_kernel_kind_of_something_else_is_not_a_kernel():
    with pytest.raises(E.NotAKernel):
        kernel_kind(b"#!/bin/sh\n" * 100)
