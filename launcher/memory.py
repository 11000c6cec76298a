"""Guest-physical memory: one mapping between two PROT_NONE guard pages.

Private and anonymous by default; shared=True backs it with a memfd (MAP_SHARED) instead, so
that another process (a vhost-user backend such as virtiofsd) can map the same pages: the
fd is `memory.fd`, handed over with SET_MEM_TABLE.

Every access to guest memory in the launcher goes through GuestMemory, so there is
exactly one bounds check: a guest-supplied (address, length) pair is refused when it
leaves guest memory or wraps around, before any byte is touched.  The guard pages
turn a bug that slips past it into a crash rather than a silent write elsewhere.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import struct

from launcher.errors import GuestMemoryError, OutsideGuestMemory

PAGE_SIZE = mmap.PAGESIZE
PROT_NONE = 0

U8 = struct.Struct("<B")
U16 = struct.Struct("<H")
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
_libc.mmap.restype = ctypes.c_void_p
MAP_FIXED = 0x10
MAP_FAILED = ctypes.c_void_p(-1).value


def _protect_none(address: int, length: int) -> None:
    if _libc.mprotect(address, length, PROT_NONE) != 0:
        err = ctypes.get_errno()
        raise GuestMemoryError(f"mprotect of guard page at {address:#x} failed: errno {err}")


class GuestMemory:
    """Guest RAM of `size` bytes; guest-physical address 0 is the first byte."""

    def __init__(self, size: int, *, shared: bool = False):
        if size <= 0 or size % PAGE_SIZE:
            raise GuestMemoryError(f"guest memory size {size:#x} is not a positive multiple of {PAGE_SIZE:#x}")
        self.size = size
        self._map = mmap.mmap(-1, size + 2 * PAGE_SIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        anchor = ctypes.c_char.from_buffer(self._map)
        base = ctypes.addressof(anchor)
        del anchor  # a live ctypes view would keep the mapping from closing
        _protect_none(base, PAGE_SIZE)
        _protect_none(base + PAGE_SIZE + size, PAGE_SIZE)
        self.host_address = base + PAGE_SIZE
        self._mem = memoryview(self._map)[PAGE_SIZE:PAGE_SIZE + size]
        self.fd: int | None = None
        if shared:
            self._share()

    def _share(self) -> None:
        """Replace the anonymous middle with a memfd mapped MAP_SHARED (guard pages stay)."""
        fd = os.memfd_create("lguest-harness-guest-ram", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, self.size)
            self._map_over(fd, mmap.MAP_SHARED, "a memfd")
        except BaseException:
            os.close(fd)
            self.close()
            raise
        self.fd = fd

    def _map_over(self, fd: int, flags: int, what) -> None:
        mapped = _libc.mmap(self.host_address, self.size, mmap.PROT_READ | mmap.PROT_WRITE, flags | MAP_FIXED, fd, 0)
        if mapped in (None, MAP_FAILED) or mapped != self.host_address:
            raise GuestMemoryError(f"mmap of guest memory over {what} failed: errno {ctypes.get_errno()}")

    @classmethod
    def from_file(cls, path, size: int) -> "GuestMemory":
        """Guest RAM mapped copy-on-write (MAP_PRIVATE) from the first `size` bytes of a file,
        between the same guard pages: pages are read from the file when first touched, guest
        writes stay in this process, and the file is never modified.  The file must be at
        least `size` bytes long (a mapping past its end would fault on access)."""
        memory = cls(size)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            memory.close()
            raise GuestMemoryError(f"cannot open guest memory file {path}: {exc.strerror}") from exc
        try:
            length = os.fstat(fd).st_size
            if length < size:
                raise GuestMemoryError(f"guest memory file {path} holds {length:#x} bytes, fewer than {size:#x}")
            # Replace the anonymous middle of the reservation; the guard pages stay PROT_NONE,
            # and close() unmaps the whole range as before.
            memory._map_over(fd, mmap.MAP_PRIVATE, f"file {path}")
        except BaseException:
            memory.close()
            raise
        finally:
            os.close(fd)
        return memory

    def save_sparse(self, path, chunk: int = PAGE_SIZE) -> int:
        """Write guest RAM to a new file, leaving holes where pages are all zero; returns the
        bytes of data written (the file's apparent size is always `size`)."""
        zero = bytes(chunk)
        written = 0
        with open(path, "xb") as out:
            for offset in range(0, self.size, chunk):
                part = self._mem[offset:offset + chunk]
                if part == zero[:len(part)]:
                    continue
                out.seek(offset)
                out.write(part)
                written += len(part)
            out.truncate(self.size)
        return written

    # -- the one door ---------------------------------------------------------
    def check(self, addr: int, length: int) -> None:
        """Refuse a range that is not wholly inside guest memory."""
        if addr < 0 or length < 0 or addr + length > self.size:
            raise OutsideGuestMemory(addr, length, self.size)

    def contains(self, addr: int, length: int) -> bool:
        return 0 <= addr and 0 <= length and addr + length <= self.size

    def view(self, addr: int, length: int) -> memoryview:
        """A zero-copy, writable view of guest memory."""
        self.check(addr, length)
        return self._mem[addr:addr + length]

    def read(self, addr: int, length: int) -> bytes:
        self.check(addr, length)
        return bytes(self._mem[addr:addr + length])

    def write(self, addr: int, data) -> None:
        length = len(data) if not isinstance(data, memoryview) else data.nbytes
        self.check(addr, length)
        self._mem[addr:addr + length] = data

    def fill(self, addr: int, length: int, value: int = 0) -> None:
        self.check(addr, length)
        self._map[PAGE_SIZE + addr:PAGE_SIZE + addr + length] = bytes([value]) * length

    def unpack(self, layout: struct.Struct, addr: int) -> tuple:
        self.check(addr, layout.size)
        return layout.unpack_from(self._mem, addr)

    def pack(self, layout: struct.Struct, addr: int, *values) -> None:
        """Packed in one copy: struct.pack_into would zero the destination first, and a running
        guest could read that zero (see launcher.virtqueue)."""
        self.check(addr, layout.size)
        self._mem[addr:addr + layout.size] = layout.pack(*values)

    def strnlen(self, addr: int, limit: int) -> int:
        """Length of the NUL-terminated string at addr, never looking past limit or RAM."""
        self.check(addr, 0)
        end = min(self.size, addr + limit)
        idx = self._map.find(b"\0", PAGE_SIZE + addr, PAGE_SIZE + end)
        return (end if idx < 0 else idx - PAGE_SIZE) - addr

    # -- little-endian scalars -------------------------------------------------
    def read_u8(self, addr: int) -> int:
        return self.unpack(U8, addr)[0]

    def read_u16(self, addr: int) -> int:
        return self.unpack(U16, addr)[0]

    def read_u32(self, addr: int) -> int:
        return self.unpack(U32, addr)[0]

    def read_u64(self, addr: int) -> int:
        return self.unpack(U64, addr)[0]

    def write_u8(self, addr: int, value: int) -> None:
        self.pack(U8, addr, value)

    def write_u16(self, addr: int, value: int) -> None:
        self.pack(U16, addr, value)

    def write_u32(self, addr: int, value: int) -> None:
        self.pack(U32, addr, value)

    def write_u64(self, addr: int, value: int) -> None:
        self.pack(U64, addr, value)

    # -- life cycle --------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._map.closed

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self._map.closed:
            return
        try:
            self._mem.release()
            self._map.close()
        except BufferError:
            # Views are still alive (a device, or a traceback holding one): the
            # mapping is unmapped when the last of them goes.
            pass

    def __enter__(self) -> "GuestMemory":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
