"""Synthetic kernel images for the loader tests: ELF32/ELF64 vmlinux and bzImages."""
from __future__ import annotations

import gzip
import lzma
import struct

import lz4.block
import zstandard

EHDR = {32: struct.Struct("<16sHHIIIIIHHHHHH"), 64: struct.Struct("<16sHHIQQQIHHHHHH")}
PHDR = {32: struct.Struct("<IIIIIIII"), 64: struct.Struct("<IIQQQQQQ")}
MACHINE = {32: 3, 64: 62}  # EM_386, EM_X86_64
PT_LOAD, PT_NOTE, ET_EXEC, ET_DYN = 1, 4, 2, 3


def make_elf(bits=64, segments=((0x100000, b"\x90" * 64, 0x100),), entry=0x100000, *, e_type=ET_EXEC,
             machine=None, phentsize=None, phnum=None, extra_note=True) -> bytes:
    """segments: (paddr, file bytes, memsz); a PT_NOTE is added to show it is skipped."""
    eh, ph = EHDR[bits], PHDR[bits]
    phdrs = [(PT_LOAD, paddr, data, memsz) for paddr, data, memsz in segments]
    if extra_note:
        phdrs.append((PT_NOTE, 0, b"note", 4))
    data_off = eh.size + ph.size * len(phdrs)
    table, blobs = b"", b""
    for p_type, paddr, data, memsz in phdrs:
        off = data_off + len(blobs)
        if bits == 64:
            table += ph.pack(p_type, 5, off, paddr | 0xFFFFFFFF80000000 if paddr else 0, paddr, len(data), memsz, 0x1000)
        else:
            table += ph.pack(p_type, off, paddr | 0xC0000000 if paddr else 0, paddr, len(data), memsz, 5, 0x1000)
        blobs += data
    ident = b"\x7fELF" + bytes([1 if bits == 32 else 2, 1, 1]) + bytes(9)
    header = eh.pack(ident, e_type, MACHINE[bits] if machine is None else machine, 1, entry, eh.size, 0, 0,
                     eh.size, ph.size if phentsize is None else phentsize,
                     len(phdrs) if phnum is None else phnum, 0, 0, 0)
    return header + table + blobs


def lz4_legacy(data: bytes) -> bytes:
    out = b"\x02\x21\x4c\x18"
    for i in range(0, len(data), 8 << 20):
        block = lz4.block.compress(data[i:i + (8 << 20)], store_size=False)
        out += struct.pack("<I", len(block)) + block
    return out


COMPRESSORS = {
    "gzip": gzip.compress,
    "xz": lambda d: lzma.compress(d, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32),
    "lzma": lambda d: lzma.compress(d, format=lzma.FORMAT_ALONE),
    "lz4": lz4_legacy,
    "zstd": lambda d: zstandard.ZstdCompressor().compress(d),
}


def make_bzimage(vmlinux: bytes = b"", compression="gzip", *, setup_sects=4, version=0x20F,
                 code32_start=0x100000, payload=None, magic=b"HdrS") -> bytes:
    """A bzImage whose protected-mode code holds a (compressed) vmlinux, with the build's size suffix."""
    if payload is None:
        payload = COMPRESSORS[compression](vmlinux) + struct.pack("<I", len(vmlinux))
    setup = bytearray((setup_sects or 4) * 512 + 512)
    struct.pack_into("<B", setup, 0x1F1, setup_sects)
    setup[0x202:0x206] = magic
    struct.pack_into("<H", setup, 0x206, version)
    struct.pack_into("<I", setup, 0x214, code32_start)
    decompressor = b"\xf4" * 0x40  # stands in for the in-guest decompressor
    struct.pack_into("<II", setup, 0x248, len(decompressor), len(payload))
    return bytes(setup) + decompressor + payload
