"""Decompress a bzImage payload (the compressed vmlinux), chosen by its magic bytes.

The kernel's build appends the decompressed size as 4 bytes after the compressed
stream, so every decoder here stops at the end of its stream and ignores what follows.
Output is capped (a hostile image must not exhaust host memory).
"""
from __future__ import annotations

import lzma
import struct
import zlib

import lz4.block
import zstandard

from launcher.loader.errors import PayloadCorrupt, PayloadTooLarge, PayloadUnknownFormat

MAX_OUTPUT = 512 << 20
LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"
LZ4_LEGACY_BLOCK = 8 << 20  # the legacy format's fixed maximum block size

MAGICS = (
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x5d\x00\x00", "lzma"),
    (LZ4_LEGACY_MAGIC, "lz4"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"BZh", "bzip2"),
    (b"\x89LZO", "lzo"),
)


def detect(payload: bytes) -> str:
    for magic, name in MAGICS:
        if payload.startswith(magic):
            return name
    raise PayloadUnknownFormat(f"payload starts with {payload[:6].hex(' ')}, which is no known compressor's magic")


def _check_size(produced: int, name: str) -> None:
    if produced > MAX_OUTPUT:
        raise PayloadTooLarge(f"{name} payload decompresses past {MAX_OUTPUT >> 20} MiB")


def _gzip(payload: bytes) -> bytes:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = d.decompress(payload, MAX_OUTPUT + 1)
    _check_size(len(out), "gzip")
    if not d.eof:
        raise PayloadCorrupt("gzip payload ends before its end-of-stream marker")
    return out


def _lzma_family(payload: bytes, fmt: int, name: str) -> bytes:
    d = lzma.LZMADecompressor(format=fmt)
    out = d.decompress(payload, MAX_OUTPUT + 1)
    _check_size(len(out), name)
    if not d.eof and fmt == lzma.FORMAT_XZ:
        raise PayloadCorrupt(f"{name} payload ends before its end-of-stream marker")
    return out


def _lz4_legacy(payload: bytes) -> bytes:
    pos, out = len(LZ4_LEGACY_MAGIC), bytearray()
    while len(payload) - pos >= 4:
        (size,) = struct.unpack_from("<I", payload, pos)
        pos += 4
        if size == struct.unpack("<I", LZ4_LEGACY_MAGIC)[0]:
            continue  # concatenated legacy streams repeat the magic
        if pos == len(payload):
            break  # that was the appended decompressed size, not a block
        if size > len(payload) - pos:
            raise PayloadCorrupt(f"lz4 block of {size:#x} bytes at {pos - 4:#x} runs past the payload")
        try:
            out += lz4.block.decompress(payload[pos:pos + size], uncompressed_size=LZ4_LEGACY_BLOCK)
        except lz4.block.LZ4BlockError as exc:
            raise PayloadCorrupt(f"lz4 block at {pos - 4:#x}: {exc}") from exc
        _check_size(len(out), "lz4")
        pos += size
    return bytes(out)


def _zstd(payload: bytes) -> bytes:
    d = zstandard.ZstdDecompressor(max_window_size=1 << 31).decompressobj()
    out = d.decompress(payload)
    _check_size(len(out), "zstd")
    if not d.eof:
        raise PayloadCorrupt("zstd payload ends before the end of its frame")
    return out


DECODERS = {
    "gzip": _gzip,
    "xz": lambda p: _lzma_family(p, lzma.FORMAT_XZ, "xz"),
    "lzma": lambda p: _lzma_family(p, lzma.FORMAT_ALONE, "lzma"),
    "lz4": _lz4_legacy,
    "zstd": _zstd,
}


def decompress(payload: bytes) -> tuple[str, bytes]:
    """Return (compressor name, decompressed bytes)."""
    name = detect(payload)
    decoder = DECODERS.get(name)
    if decoder is None:
        raise PayloadUnknownFormat(f"{name} payloads are not supported (gzip, xz, lzma, lz4, zstd are)")
    try:
        return name, decoder(payload)
    except (zlib.error, lzma.LZMAError, EOFError, zstandard.ZstdError) as exc:
        raise PayloadCorrupt(f"{name} payload: {exc}") from exc
