import os

import pytest
from hypothesis import given, strategies as st

from launcher.errors import OutsideGuestMemory
from launcher.memory import PAGE_SIZE, GuestMemory

SIZE = 4 * PAGE_SIZE


@pytest.fixture
def mem():
    with GuestMemory(SIZE) as m:
        yield m


def test_scalars_are_little_endian(mem):
    mem.write_u32(0x10, 0x11223344)
    assert mem.read(0x10, 4) == bytes([0x44, 0x33, 0x22, 0x11])
    mem.write_u64(SIZE - 8, 2**64 - 2)
    assert mem.read_u64(SIZE - 8) == 2**64 - 2
    assert mem.read_u16(0x10) == 0x3344


def test_view_is_zero_copy(mem):
    v = mem.view(0x100, 4)
    v[:] = b"abcd"
    assert mem.read(0x100, 4) == b"abcd"


@pytest.mark.parametrize("addr,length", [
    (SIZE, 1), (SIZE - 1, 2), (-1, 1), (0, SIZE + 1), (2**64 - 1, 2), (5, -1),
])
def test_out_of_range_is_refused_with_address_and_length(mem, addr, length):
    with pytest.raises(OutsideGuestMemory) as exc:
        mem.read(addr, length)
    assert f"{addr:#x}" in str(exc.value) and "outside guest memory" in str(exc.value)


@given(addr=st.integers(-2**64, 2**64), length=st.integers(0, 2**64))
def test_check_agrees_with_containment(addr, length):
    with GuestMemory(PAGE_SIZE) as m:
        inside = 0 <= addr and addr + length <= PAGE_SIZE
        if inside:
            assert len(m.view(addr, length)) == length
        else:
            with pytest.raises(OutsideGuestMemory):
                m.view(addr, length)


def test_strnlen_is_bounded(mem):
    mem.write(SIZE - 3, b"abc")
    assert mem.strnlen(SIZE - 3, 100) == 3
    mem.write(0x20, b"hi\0")
    assert mem.strnlen(0x20, 100) == 2
    assert mem.strnlen(0x20, 1) == 1


def test_size_must_be_page_multiple():
    from launcher.errors import GuestMemoryError
    with pytest.raises(GuestMemoryError):
        GuestMemory(PAGE_SIZE + 1)


def test_close_with_a_live_view_does_not_raise():
    m = GuestMemory(PAGE_SIZE)
    v = m.view(0, 16)
    m.close()
    v[0] = 1  # the mapping outlives close() while a view holds it
    assert v[0] == 1


def test_shared_memory_is_one_memfd_another_mapping_sees():
    """shared=True: the pages live in memory.fd, so a second mapping of it (a vhost-user
    backend's) sees the guest's writes and the guest sees the backend's; the guards stay."""
    import mmap as _mmap
    mem = GuestMemory(4 * PAGE_SIZE, shared=True)
    try:
        assert os.fstat(mem.fd).st_size == mem.size
        other = _mmap.mmap(mem.fd, mem.size)
        mem.write(PAGE_SIZE, b"guest")
        assert other[PAGE_SIZE:PAGE_SIZE + 5] == b"guest"
        other[0:7] = b"backend"
        assert mem.read(0, 7) == b"backend"
        other.close()
        with pytest.raises(OutsideGuestMemory):
            mem.read(mem.size - 1, 2)
    finally:
        fd = mem.fd
        mem.close()
    assert mem.fd is None
    with pytest.raises(OSError):
        os.fstat(fd)


def test_private_memory_has_no_fd():
    mem = GuestMemory(PAGE_SIZE)
    assert mem.fd is None
    mem.close()
