"""Hostile kernel images: whatever the bytes, only LoaderError subclasses escape, and a
refused image leaves guest memory untouched."""
import struct

from hypothesis import example, given, strategies as st

from launcher.errors import LoaderError
from launcher.loader import load_kernel_bytes
from launcher.memory import GuestMemory
from tests.unit.loader.images import make_bzimage, make_elf

MEM = 2 << 20  # small: every example fills and checks all of it
CANARY = 0x5A

ELF64 = make_elf(64, [(0x100000, b"\x90" * 0x40, 0x80), (0x180000, b"\xcc" * 0x20, 0x20)])
ELF32 = make_elf(32, [(0x100000, b"\x90" * 0x40, 0x80)])
BZ = make_bzimage(make_elf(64, [(0x100000, b"\x90" * 0x40, 0x40)]), "gzip")

mutations = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8)


def mutate(image: bytes, edits, cut: int | None) -> bytes:
    data = bytearray(image)
    for pos, value in edits:
        data[pos % len(data)] = value
    return bytes(data[:cut] if cut is not None else data)


def check(image: bytes) -> None:
    with GuestMemory(MEM) as mem:
        mem.fill(0, MEM, CANARY)
        try:
            load_kernel_bytes(mem, image)
        except LoaderError:
            assert mem.read(0, MEM).count(CANARY) == MEM, "a refused image wrote guest memory"


@given(st.sampled_from([ELF64, ELF32, BZ]), mutations, st.none() | st.integers(0, 0x2000))
@example(ELF64, [(0x36, 0), (0x37, 0)], None)   # e_phentsize 0
@example(ELF64, [(4, 9)], None)                 # EI_CLASS neither 32 nor 64
@example(BZ, [(0x1F1, 0xFF)], None)             # setup sectors past the file
@example(ELF64, [(90343, 128)], None)           # a p_offset near 2**63: pyelftools' OverflowError
def test_mutated_images_raise_only_loader_errors(image, edits, cut):
    check(mutate(image, edits, cut))


@given(st.binary(max_size=0x400))
def test_random_bytes_after_the_elf_magic(tail):
    check(b"\x7fELF" + tail)


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_payload_offset_and_length_are_bounded(offset, length):
    data = bytearray(BZ)
    struct.pack_into("<II", data, 0x248, offset, length)
    check(bytes(data))
