"""boot_params bytes at the boot protocol's offsets, and the validating Cmdline."""
import struct

import pytest

from launcher.loader import BootParams, Cmdline, E820Entry, E820Type, HardwareSubarch, LoadFlags
from launcher.loader.errors import BootParamsInvalid, CmdlineInvalid, CmdlineTooLong


def test_zero_page_bytes_for_kvm():
    page = BootParams(
        cmd_line_ptr=0x20000,
        e820=(E820Entry(0, 0x9FC00), E820Entry(0x100000, 0x3F00000)),
        ramdisk_image=0x3F00000, ramdisk_size=0x1234,
    ).render()
    assert len(page) == 4096
    assert page[0x1E8] == 2                                    # e820_entries
    assert struct.unpack_from("<H", page, 0x1FE)[0] == 0xAA55   # boot_flag
    assert page[0x202:0x206] == b"HdrS"
    assert struct.unpack_from("<H", page, 0x206)[0] == 0x20C   # version
    assert page[0x210] == 0xFF                                 # type_of_loader
    assert page[0x211] == LoadFlags.LOADED_HIGH
    assert struct.unpack_from("<II", page, 0x218) == (0x3F00000, 0x1234)
    assert struct.unpack_from("<I", page, 0x228)[0] == 0x20000
    assert struct.unpack_from("<I", page, 0x23C)[0] == 0       # hardware_subarch PC
    assert struct.unpack_from("<QQI", page, 0x2D0) == (0, 0x9FC00, 1)
    assert struct.unpack_from("<QQI", page, 0x2D0 + 20) == (0x100000, 0x3F00000, 1)


def test_zero_page_for_lguest_as_the_original():
    page = BootParams(cmd_line_ptr=0x1000, e820=(E820Entry(0, 0x4000000),),
                      hardware_subarch=HardwareSubarch.LGUEST, loadflags=LoadFlags.KEEP_SEGMENTS,
                      version=0x207).render()
    assert struct.unpack_from("<I", page, 0x23C)[0] == 1
    assert page[0x211] & 0x40
    assert struct.unpack_from("<H", page, 0x206)[0] == 0x207


def test_setup_header_is_copied_then_overridden():
    header = bytearray(0x268 - 0x1F1)
    struct.pack_into("<I", header, 0x230 - 0x1F1, 0x200000)  # kernel_alignment survives
    header[0x210 - 0x1F1] = 0x21                             # type_of_loader is ours
    page = BootParams(cmd_line_ptr=0, e820=(), setup_header=bytes(header)).render()
    assert struct.unpack_from("<I", page, 0x230)[0] == 0x200000
    assert page[0x210] == 0xFF


def test_field_overflow_and_e820_overflow():
    with pytest.raises(BootParamsInvalid, match="cmd_line_ptr"):
        BootParams(cmd_line_ptr=1 << 32, e820=()).render()
    with pytest.raises(BootParamsInvalid, match="129 e820 entries"):
        BootParams(cmd_line_ptr=0, e820=(E820Entry(0, 1, E820Type.RESERVED),) * 129).render()


def test_cmdline_renders_and_terminates():
    cmd = Cmdline()
    cmd.insert_str("console=ttyS0 quiet")
    cmd.insert("tsc_early_khz", "2000000")
    cmd.add_virtio_mmio_device(0x1000, 0xD0000000, 5)
    assert str(cmd) == "console=ttyS0 quiet tsc_early_khz=2000000 virtio_mmio.device=0x1000@0xd0000000:5"
    assert cmd.as_bytes().endswith(b":5\0")
    assert cmd.has("quiet") and cmd.has("tsc_early_khz") and not cmd.has("tsc")


@pytest.mark.parametrize("action,error", [
    (lambda c: c.insert_str("a\0b"), CmdlineInvalid),
    (lambda c: c.insert_str("   "), CmdlineInvalid),
    (lambda c: c.insert("bad key"), CmdlineInvalid),
    (lambda c: c.insert("k", "v w"), CmdlineInvalid),
    (lambda c: c.insert_str("x" * 16), CmdlineTooLong),
])
def test_cmdline_refusals_leave_it_unchanged(action, error):
    cmd = Cmdline(capacity=16)
    cmd.insert_str("root=1")
    with pytest.raises(error):
        action(cmd)
    assert str(cmd) == "root=1"


def test_cmdline_exactly_at_capacity():
    cmd = Cmdline(capacity=8)
    cmd.insert_str("x" * 7)  # 7 bytes + NUL = 8
    with pytest.raises(CmdlineTooLong, match="8 bytes plus NUL exceeds the limit of 8"):
        Cmdline(capacity=8).insert_str("x" * 8)
