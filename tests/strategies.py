"""Hypothesis strategies shared by the property tests (tests/unit/**/test_*_props.py)."""
from __future__ import annotations

import functools
from dataclasses import dataclass

from hypothesis import strategies as st

from launcher.memory import PAGE_SIZE

# -- split virtqueues (virtio 1.x, 2.7) -------------------------------------------------------------

queue_sizes = st.sampled_from([1, 2, 4, 8, 16])

# Indices near the 16-bit wrap are where index arithmetic goes wrong.
ring_indices = st.one_of(st.integers(0xFFF0, 0xFFFF), st.integers(0, 0xFFFF), st.just(0))


@dataclass(frozen=True)
class ChainShape:
    """One chain a well-behaved driver posts."""
    readable: tuple[bytes, ...]
    writable: tuple[int, ...]
    indirect: bool


@st.composite
def chain_shapes(draw, max_buffers: int = 4, max_len: int = 64) -> ChainShape:
    readable = draw(st.lists(st.binary(max_size=max_len), max_size=max_buffers))
    writable = draw(st.lists(st.integers(0, max_len), min_size=0 if readable else 1,
                             max_size=max_buffers))
    return ChainShape(tuple(readable), tuple(writable), draw(st.booleans()))


# -- hostile guests ----------------------------------------------------------------------------------

HOSTILE_MEM_SIZE = 4 * PAGE_SIZE     # small: random addresses land inside it often


@dataclass(frozen=True)
class RawDesc:
    addr: int
    length: int
    flags: int
    next: int


HOSTILE_TABLE = 0x2000              # where hostile tests put a would-be indirect table

_TYPICAL_FLAGS = [0, 1, 2, 3, 4, 6]  # none, NEXT, WRITE, NEXT|WRITE, INDIRECT, INDIRECT|WRITE


def _addresses(mem_size: int):
    return st.one_of(
        st.integers(0, mem_size),                       # inside, or just at the end
        st.just(HOSTILE_TABLE),                         # the would-be indirect table
        st.integers(mem_size - 64, mem_size + 64),      # straddling the end
        st.sampled_from([2**64 - 1, 2**64 - 16, 2**63]),  # wrap-around bait
        st.integers(0, 2**64 - 1),
    )


def _lengths():
    return st.one_of(
        st.integers(0, 64),
        st.integers(1, 8).map(lambda n: 16 * n),        # plausible indirect table sizes
        st.sampled_from([2**32 - 1, 2**31, 15, 17]),
        st.integers(0, 2**32 - 1),
    )


@functools.lru_cache(maxsize=None)   # building strategies is costly; draw time matters
def raw_descs(queue_size: int, mem_size: int = HOSTILE_MEM_SIZE):
    """A descriptor a hostile driver writes: mostly plausible, sometimes anything."""
    plausible = st.builds(
        RawDesc,
        addr=st.one_of(st.integers(0, mem_size - 64), st.just(HOSTILE_TABLE)),
        length=st.one_of(st.integers(0, 64), st.integers(1, 8).map(lambda n: 16 * n)),
        flags=st.sampled_from(_TYPICAL_FLAGS),
        next=st.integers(0, queue_size - 1),
    )
    wild = st.builds(
        RawDesc,
        addr=_addresses(mem_size),
        length=_lengths(),
        flags=st.one_of(st.sampled_from(_TYPICAL_FLAGS + [5, 7]), st.integers(0, 0xFFFF)),
        next=st.one_of(st.integers(0, queue_size + 1), st.integers(0, 0xFFFF)),
    )
    return st.one_of(plausible, plausible, wild)


# Operations on a queue under attack: the engine's public methods plus guest writes
# between them (the guest may rewrite anything at any time).
@dataclass(frozen=True)
class Pop:
    pass


@dataclass(frozen=True)
class PushLast:
    """Device completes the most recently popped (or refused) head with `written` bytes."""
    written: int


@dataclass(frozen=True)
class NeedsInterrupt:
    pass


@dataclass(frozen=True)
class Suppress:
    on: bool


@dataclass(frozen=True)
class Poke:
    """Guest writes `data` at byte `offset` of the region `where` (desc, avail, used, table)."""
    where: str
    offset: int
    data: bytes


queue_ops = st.lists(
    st.one_of(
        st.just(Pop()),
        st.just(Pop()),
        st.builds(PushLast, st.integers(0, 64)),
        st.just(NeedsInterrupt()),
        st.builds(Suppress, st.booleans()),
        st.builds(Poke, st.sampled_from(["desc", "avail", "used", "table"]),
                  st.integers(0, 300), st.binary(min_size=1, max_size=16)),
    ),
    max_size=16,
)
