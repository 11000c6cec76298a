"""Property tests for the split virtqueue engine (virtio 1.x, 2.7).

(a) every chain a well-behaved driver posts comes back unchanged, through 16-bit wrap;
(b) a hostile guest writing anything into the rings and tables only ever gets the
    engine's own typed errors, and every buffer handed out lies inside guest memory;
(c) interrupt and kick decisions agree with a small model of the spec's rules.
"""
from __future__ import annotations

import functools

from hypothesis import HealthCheck, event, example, given, settings, strategies as st

from harness.fakes.driver import FakeDriver
from launcher.errors import VirtqueueError
from launcher.memory import PAGE_SIZE, GuestMemory
from launcher.virtqueue import DESC, ChainError, SplitVirtqueue
from tests.strategies import (
    HOSTILE_MEM_SIZE, HOSTILE_TABLE, ChainShape, NeedsInterrupt, Poke, Pop, PushLast, RawDesc, Suppress, chain_shapes,
    queue_ops, queue_sizes, raw_descs, ring_indices,
)

# The hostile-input test is the one that finds real bugs: run it several times as many
# examples as the profile asks for (4000 under the `ci` profile).
HOSTILE_EXAMPLES = 4 * settings().max_examples


# -- (a) round trip ---------------------------------------------------------------------------------

@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    size=queue_sizes,
    layout=st.sampled_from(["modern", "legacy"]),
    start=ring_indices,
    batches=st.lists(st.lists(chain_shapes(), min_size=1, max_size=6), min_size=1, max_size=8),
    reverse_completion=st.booleans(),
)
@example(size=1, layout="modern", start=0xFFFF,
         batches=[[ChainShape((b"a",), (1,), True)]] * 3, reverse_completion=False)
def test_posted_chains_come_back_unchanged(size, layout, start, batches, reverse_completion):
    mem = GuestMemory(16 * PAGE_SIZE)
    drv = getattr(FakeDriver, layout)(mem, size, start_idx=start)
    vq = drv.device_queue()
    for batch in batches:
        posted = {}
        for shape in batch:
            buffers = len(shape.readable) + len(shape.writable)
            indirect = shape.indirect and buffers <= size     # 2.7.5.2: no chain longer than the queue
            if drv.num_free < (1 if indirect else buffers):
                break
            head = drv.add(list(shape.readable), list(shape.writable), indirect=indirect)
            posted[head] = shape
        drv.kick()
        chains = []
        while (chain := vq.pop()) is not None:
            shape = posted.pop(chain.head)
            assert [bytes(b) for b in chain.readable] == list(shape.readable)
            assert [len(b) for b in chain.writable] == list(shape.writable)
            assert chain.readable_ranges == drv.posted(chain.head).readable
            assert chain.writable_ranges == drv.posted(chain.head).writable
            chains.append(chain)
        assert not posted, "every posted chain is popped exactly once"
        if reverse_completion:
            chains.reverse()
        expected = []
        for chain in chains:
            reply = bytes((chain.head + k) & 0xFF for k in range(chain.writable_len))
            written = chain.write_into(reply)
            vq.push(chain.head, written)
            expected.append((chain.head, written, reply))
        assert drv.reap() == expected
    assert vq.last_avail_idx == drv.avail_idx and vq.used_idx == drv.last_used_idx


# -- (b) hostile guest --------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _hostile_parts(size: int):
    """Strategies for the parts of a queue of `size` under attack (built once per size)."""
    return dict(
        descs=st.lists(raw_descs(size), min_size=size, max_size=size),
        avail_idx_delta=st.one_of(st.integers(0, size), st.integers(0, size), st.integers(0, 0xFFFF)),
        avail_ring=st.lists(st.one_of(st.integers(0, size - 1), st.integers(0, size - 1),
                                      st.integers(0, 0xFFFF)), min_size=size, max_size=size),
    )


_TABLE_DESCS = st.lists(raw_descs(8), max_size=8)        # a would-be indirect table at TABLE
_RAW_TABLE = st.one_of(st.none(), st.none(), st.none(), st.binary(min_size=16, max_size=256))


@st.composite
def hostile_queues(draw):
    size = draw(queue_sizes)
    parts = _hostile_parts(size)
    return dict(
        size=size,
        event_idx=draw(st.booleans()),
        start=draw(ring_indices),
        descs=draw(parts["descs"]),
        table=draw(_TABLE_DESCS),
        avail_idx_delta=draw(parts["avail_idx_delta"]),
        avail_ring=draw(parts["avail_ring"]),
        raw=draw(_RAW_TABLE),                                  # raw bytes over the table
        ops=draw(queue_ops),
    )


TABLE = HOSTILE_TABLE


def _inside(addr, length):
    return 0 <= addr and addr + length <= HOSTILE_MEM_SIZE


@settings(max_examples=HOSTILE_EXAMPLES, suppress_health_check=[HealthCheck.too_slow])
@given(q=hostile_queues())
@example(q=dict(size=1, event_idx=False, start=0, descs=[RawDesc(TABLE, 16, 4, 0)],
                table=[RawDesc(TABLE, 16, 4, 0)], avail_idx_delta=1, avail_ring=[0], raw=None,
                ops=[Pop()]))     # indirect table that points at itself: NestedIndirect
@example(q=dict(size=2, event_idx=True, start=0xFFFF, descs=[RawDesc(0, 1, 1, 0)] * 2, table=[],
                avail_idx_delta=2, avail_ring=[0, 1], raw=None, ops=[Pop(), Pop(), Pop()]))
@example(q=dict(size=1, event_idx=False, start=0, descs=[RawDesc(2**64 - 1, 2, 0, 0)], table=[],
                avail_idx_delta=1, avail_ring=[0], raw=None, ops=[Pop()]))
def test_hostile_guest_only_sees_typed_errors(q):
    size, start = q["size"], q["start"]
    mem = GuestMemory(HOSTILE_MEM_SIZE)
    drv = FakeDriver.modern(mem, size, event_idx=q["event_idx"], start_idx=start,
                            arena=(TABLE + 0x400, 0x400))
    vq = drv.device_queue()           # last_avail_idx == used idx == start
    for k, d in enumerate(q["descs"]):
        drv.write_desc(k, d.addr, d.length, d.flags, d.next)
    for k, d in enumerate(q["table"]):
        mem.pack(DESC, TABLE + 16 * k, d.addr, d.length, d.flags, d.next)
    if q["raw"] is not None:
        desc_addr, desc_len = drv.desc_table
        drv.write_raw(desc_addr, q["raw"][:desc_len])
    for k, head in enumerate(q["avail_ring"]):
        drv.write_avail_entry(k, head)
    drv.write_avail_idx(start + q["avail_idx_delta"])
    regions = {"desc": drv.desc_table, "avail": drv.avail_ring, "used": drv.used_ring,
               "table": (TABLE, 0x80)}

    last_head = None
    ops = [Pop()] * (2 * size + 2) if not q["ops"] else list(q["ops"]) + [Pop()] * (size + 1)
    for op in ops:
        try:
            if isinstance(op, Pop):
                chain = vq.pop()
                if chain is None:
                    continue
                last_head = chain.head
                event("chain popped")
                assert 0 <= chain.head < size
                for (addr, length), buf in zip(chain.readable_ranges + chain.writable_ranges,
                                               chain.readable + chain.writable):
                    assert _inside(addr, length) and len(buf) == length
                assert len(chain.readable) + len(chain.writable) <= size + HOSTILE_MEM_SIZE // 16
                chain.release()
            elif isinstance(op, PushLast):
                if last_head is not None:
                    vq.push(last_head, op.written)
            elif isinstance(op, NeedsInterrupt):
                assert vq.needs_interrupt() in (True, False)
            elif isinstance(op, Suppress):
                vq.suppress_notifications(op.on)
            elif isinstance(op, Poke):
                addr, length = regions[op.where]
                data = op.data[:max(0, length - op.offset)]
                if data:
                    drv.write_raw(addr + op.offset, data)
        except ChainError as err:
            event(type(err).__name__)
            assert 0 <= err.head < size
            last_head = err.head
            assert "(2.7" in str(err)
        except VirtqueueError as err:
            event(type(err).__name__)
            assert "(2.7" in str(err)
    vq.close()


# -- (c) notification rules against a model ------------------------------------------------------------

def model_need_event(event: int, new: int, old: int) -> bool:
    """2.7.7.2 / 2.7.10 in words: notify iff, for some entry written at index j while moving
    from old to new, j == event; i.e. event is one of old, old+1, ..., new-1 (mod 2^16)."""
    return event in {(old + k) & 0xFFFF for k in range((new - old) & 0xFFFF)}


@st.composite
def notification_programs(draw):
    steps = draw(st.lists(st.one_of(
        st.tuples(st.just("add"), st.integers(1, 4)),
        st.tuples(st.just("serve"), st.integers(1, 4)),
        st.tuples(st.just("used_event"), st.integers(-3, 6)),   # relative to the driver's view
        st.tuples(st.just("no_interrupt"), st.booleans()),
        st.tuples(st.just("suppress"), st.booleans()),
        st.tuples(st.just("check"), st.just(0)),
    ), max_size=30))
    return steps


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(event_idx=st.booleans(), notify_on_empty=st.booleans(), start=ring_indices,
       steps=notification_programs())
@example(event_idx=True, notify_on_empty=False, start=0xFFFE,
         steps=[("used_event", 1), ("add", 4), ("serve", 4), ("check", 0)])
@example(event_idx=False, notify_on_empty=False, start=0, steps=[("add", 1), ("add", 4)])  # ring full
def test_notifications_follow_the_spec_model(event_idx, notify_on_empty, start, steps):
    size = 8
    mem = GuestMemory(16 * PAGE_SIZE)
    drv = FakeDriver.modern(mem, size, event_idx=event_idx, start_idx=start)
    vq = drv.device_queue(notify_on_empty=notify_on_empty)
    signalled = start          # model: used idx at the last interrupt decision
    kicked = start             # model: avail idx at the last kick decision
    suppressed = False
    for step, arg in steps:
        if step == "add":
            for _ in range(min(arg, drv.num_free // 2)):   # each chain takes 2 descriptors
                drv.add([b"x"], [1])
            old, new = kicked, drv.avail_idx
            if event_idx:
                want = model_need_event(drv.avail_event, new, old) if new != old else False
            else:
                want = new != old and not suppressed
            assert drv.kick() == want
            event(f"kick={want} event_idx={event_idx}")
            kicked = new
        elif step == "serve":
            for _ in range(arg):
                chain = vq.pop()
                if chain is None:
                    break
                vq.push(chain.head, 1)
            drv.reap()
            if event_idx and not suppressed:
                assert drv.avail_event == vq.last_avail_idx   # 2.7.10: kick me for the next one
        elif step == "used_event":
            drv.set_used_event(drv.last_used_idx + arg)
        elif step == "no_interrupt":
            drv.set_no_interrupt(arg)
        elif step == "suppress":
            vq.suppress_notifications(arg)
            suppressed = arg
        elif step == "check":
            old, new = signalled, vq.used_idx
            if old == new:
                want = False
            elif notify_on_empty and vq.last_avail_idx == drv.avail_idx:
                want = True
            elif event_idx:
                want = model_need_event(drv.used_event, new, old)
            else:
                want = not mem.read_u16(drv.avail_addr) & 1
            assert vq.needs_interrupt() == want
            event(f"interrupt={want} event_idx={event_idx}")
            signalled = new
    vq.close()
