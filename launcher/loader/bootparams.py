"""The x86 zero page (struct boot_params) from one declarative field table.

Offsets, sizes and names follow Documentation/x86/boot.rst and zero-page.rst; the
setup header part (0x1f1..0x268) has the same offsets in a bzImage file, so the
same table parses a bzImage.  Nothing else in the launcher hard-codes an offset.
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from launcher.loader.errors import BootParamsInvalid

ZERO_PAGE_SIZE = 0x1000
SETUP_HEADER_START = 0x1F1
SETUP_HEADER_END = 0x268  # end of the 2.15 header (kernel_info_offset)
E820_TABLE = 0x2D0
E820_ENTRY = struct.Struct("<QQI")
E820_MAX = 128  # E820_MAX_ENTRIES_ZEROPAGE

# name: (offset, struct format) -- little-endian, from the boot protocol.
FIELDS: dict[str, tuple[int, str]] = {
    "ext_ramdisk_image": (0x0C0, "I"),
    "ext_ramdisk_size": (0x0C4, "I"),
    "ext_cmd_line_ptr": (0x0C8, "I"),
    "e820_entries": (0x1E8, "B"),
    "setup_sects": (0x1F1, "B"),
    "boot_flag": (0x1FE, "H"),
    "header": (0x202, "4s"),
    "version": (0x206, "H"),
    "type_of_loader": (0x210, "B"),
    "loadflags": (0x211, "B"),
    "code32_start": (0x214, "I"),
    "ramdisk_image": (0x218, "I"),
    "ramdisk_size": (0x21C, "I"),
    "heap_end_ptr": (0x224, "H"),
    "cmd_line_ptr": (0x228, "I"),
    "initrd_addr_max": (0x22C, "I"),
    "kernel_alignment": (0x230, "I"),
    "relocatable_kernel": (0x234, "B"),
    "xloadflags": (0x236, "H"),
    "cmdline_size": (0x238, "I"),
    "hardware_subarch": (0x23C, "I"),
    "payload_offset": (0x248, "I"),
    "payload_length": (0x24C, "I"),
    "pref_address": (0x258, "Q"),
    "init_size": (0x260, "I"),
}
_STRUCTS = {name: (off, struct.Struct("<" + fmt)) for name, (off, fmt) in FIELDS.items()}

HDRS_MAGIC = b"HdrS"
BOOT_FLAG = 0xAA55
TYPE_OF_LOADER_UNDEFINED = 0xFF
DEFAULT_CMDLINE_SIZE = 256  # protocol < 2.06 has no cmdline_size field; 255 chars + NUL


class LoadFlags(enum.IntFlag):
    LOADED_HIGH = 0x01
    KEEP_SEGMENTS = 0x40  # lguest: the entry path must not reload segment registers
    CAN_USE_HEAP = 0x80


class HardwareSubarch(enum.IntEnum):
    PC = 0
    LGUEST = 1


class E820Type(enum.IntEnum):
    RAM = 1
    RESERVED = 2


@dataclass(frozen=True)
class E820Entry:
    addr: int
    size: int
    type: E820Type = E820Type.RAM


def get(buf, name: str):
    off, layout = _STRUCTS[name]
    return layout.unpack_from(buf, off)[0]


def put(buf: bytearray, name: str, value) -> None:
    off, layout = _STRUCTS[name]
    try:
        layout.pack_into(buf, off, value)
    except struct.error as exc:
        raise BootParamsInvalid(f"boot_params.{name} = {value!r} does not fit its field ({exc})") from exc


@dataclass(frozen=True)
class BootParams:
    """Everything that varies between boots; render() gives the zero page bytes."""

    cmd_line_ptr: int
    e820: tuple[E820Entry, ...]
    hardware_subarch: HardwareSubarch = HardwareSubarch.PC
    loadflags: LoadFlags = LoadFlags.LOADED_HIGH
    version: int = 0x20C
    ramdisk_image: int = 0
    ramdisk_size: int = 0
    setup_header: bytes | None = None  # copied from a bzImage first, as the protocol asks

    def render(self) -> bytes:
        if len(self.e820) > E820_MAX:
            raise BootParamsInvalid(f"{len(self.e820)} e820 entries exceed the zero page's {E820_MAX}")
        page = bytearray(ZERO_PAGE_SIZE)
        if self.setup_header is not None:
            page[SETUP_HEADER_START:SETUP_HEADER_END] = self.setup_header[:SETUP_HEADER_END - SETUP_HEADER_START]
        put(page, "boot_flag", BOOT_FLAG)
        put(page, "header", HDRS_MAGIC)
        put(page, "version", self.version)
        put(page, "type_of_loader", TYPE_OF_LOADER_UNDEFINED)
        put(page, "loadflags", get(page, "loadflags") | self.loadflags)
        put(page, "cmd_line_ptr", self.cmd_line_ptr)
        put(page, "hardware_subarch", self.hardware_subarch)
        put(page, "ramdisk_image", self.ramdisk_image)
        put(page, "ramdisk_size", self.ramdisk_size)
        put(page, "e820_entries", len(self.e820))
        for i, entry in enumerate(self.e820):
            E820_ENTRY.pack_into(page, E820_TABLE + i * E820_ENTRY.size, entry.addr, entry.size, entry.type)
        return bytes(page)
