"""Split virtqueue engine: layout, round trips, one test per guest-input rule and per
interrupt/notification suppression rule (virtio 1.x, 2.7)."""
import pytest

from harness.fakes.driver import DriverError, FakeDriver
from launcher.errors import LauncherError, VirtqueueError
from launcher.memory import PAGE_SIZE, GuestMemory
from launcher.virtqueue import (
    VIRTQ_DESC_F_INDIRECT as INDIRECT, VIRTQ_DESC_F_NEXT as NEXT, VIRTQ_DESC_F_WRITE as WRITE,
    DESC, VIRTQ_USED_F_NO_NOTIFY, AvailIndexJump, BufferOutsideGuestMemory, ChainError, DescriptorLoop,
    HeadIndexOutOfRange, IndirectTableLengthInvalid, IndirectTableTooLarge, IndirectWithNext, NestedIndirect,
    ChainTooLong, NextIndexOutOfRange, QueueSizeInvalid, ReadableAfterWritable, RingAlignmentInvalid,
    RingMisaligned, RingOutsideGuestMemory, SplitVirtqueue, legacy_layout, legacy_size,
    vring_need_event,
)

MEM_SIZE = 64 * PAGE_SIZE
QSIZE = 8


@pytest.fixture
def mem():
    with GuestMemory(MEM_SIZE) as m:
        yield m


@pytest.fixture
def drv(mem):
    return FakeDriver.modern(mem, QSIZE)


@pytest.fixture
def vq(drv):
    q = drv.device_queue()
    yield q
    q.close()


def pop_one(vq):
    chain = vq.pop()
    assert chain is not None
    return chain


def offer(drv, head, pos=0, idx=1):
    """Hostile-style: put head in avail ring slot pos and publish idx."""
    drv.write_avail_entry(pos, head)
    drv.write_avail_idx(idx)


# -- layout (2.7) -----------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 3, 6, 65536, 2**15 + 1, -8, 1.0])
def test_queue_size_must_be_power_of_two_up_to_32768(mem, size):
    with pytest.raises(QueueSizeInvalid, match=r"power of two .*\(2\.7\)"):
        SplitVirtqueue(mem, size, 0, 0x1000, 0x2000)


@pytest.mark.parametrize("size", [1, 2, 256, 32768])
def test_legal_queue_sizes(size):
    with GuestMemory(1 << 20) as m:
        desc, avail, used = legacy_layout(size, 0, 4096)
        SplitVirtqueue(m, size, desc, avail, used).close()


@pytest.mark.parametrize("desc,avail,used,ring,align", [
    (0x8, 0x1000, 0x2000, "descriptor table", 16),
    (0x0, 0x1001, 0x2000, "available ring", 2),
    (0x0, 0x1000, 0x2002, "used ring", 4),
])
def test_rings_must_be_aligned(mem, desc, avail, used, ring, align):
    with pytest.raises(RingMisaligned) as exc:
        SplitVirtqueue(mem, QSIZE, desc, avail, used)
    assert ring in str(exc.value) and f"{align:#x}" in str(exc.value)


@pytest.mark.parametrize("desc,avail,used,ring", [
    (MEM_SIZE - 0x40, 0x1000, 0x2000, "descriptor table"),   # 8 * 16 bytes do not fit
    (0x0, MEM_SIZE - 0x10, 0x2000, "available ring"),        # 6 + 2*8 bytes do not fit
    (0x0, 0x1000, MEM_SIZE - 0x40, "used ring"),             # 6 + 8*8 bytes do not fit
    (0x0, 0x1000, 2**64 - 0x40, "used ring"),
])
def test_rings_must_lie_inside_guest_memory(mem, desc, avail, used, ring):
    with pytest.raises(RingOutsideGuestMemory) as exc:
        SplitVirtqueue(mem, QSIZE, desc, avail, used)
    assert ring in str(exc.value) and "outside guest memory" in str(exc.value)


def test_legacy_layout_matches_vring_init():
    # desc at base, avail right after, used at the next `align` boundary.
    assert legacy_layout(256, 0x10000, 4096) == (0x10000, 0x11000, 0x12000)
    assert legacy_size(256, 4096) == 0x2000 + 6 + 8 * 256
    assert legacy_layout(8, 0, 64) == (0, 0x80, 0xc0)


def test_legacy_alignment_must_be_power_of_two(mem):
    with pytest.raises(RingAlignmentInvalid):
        SplitVirtqueue.legacy(mem, QSIZE, 0, align=3000)


def test_errors_belong_to_the_launcher_tree():
    for cls in (AvailIndexJump, HeadIndexOutOfRange, ChainError, QueueSizeInvalid):
        assert issubclass(cls, VirtqueueError) and issubclass(cls, LauncherError)


# -- round trips --------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["modern", "legacy"])
@pytest.mark.parametrize("indirect", [False, True])
def test_chain_round_trip(mem, layout, indirect):
    drv = getattr(FakeDriver, layout)(mem, QSIZE)
    vq = drv.device_queue()
    head = drv.add([b"hdr", b"payload"], [4, 16], indirect=indirect)
    assert not vq.has_available()       # added but not yet published
    drv.kick()
    assert vq.has_available()
    chain = pop_one(vq)
    assert chain.head == head
    assert chain.read_all() == b"hdrpayload"
    assert [bytes(b) for b in chain.readable] == [b"hdr", b"payload"]
    assert chain.readable_ranges == drv.posted(head).readable
    assert chain.writable_ranges == drv.posted(head).writable
    assert (chain.readable_len, chain.writable_len) == (10, 20)
    assert chain.write_into(b"0123456789") == 10
    vq.push(chain.head, 10)
    assert vq.pop() is None
    assert drv.reap() == [(head, 10, b"0123456789")]
    vq.close()


def test_views_are_zero_copy(drv, vq, mem):
    head = drv.add([b"abc"], [4])
    drv.kick()
    chain = pop_one(vq)
    chain.writable[0][:] = b"wxyz"
    assert mem.read(drv.posted(head).writable[0][0], 4) == b"wxyz"


def test_write_into_scatters_and_stops_at_capacity(drv, vq):
    drv.add([], [2, 3])
    drv.kick()
    chain = pop_one(vq)
    assert chain.write_into(b"abcdefgh") == 5
    assert [bytes(b) for b in chain.writable] == [b"ab", b"cde"]
    assert chain.write_into(b"XY", offset=1) == 2
    assert [bytes(b) for b in chain.writable] == [b"aX", b"Yde"]


def test_indices_wrap_at_2_16(mem):
    drv = FakeDriver.modern(mem, QSIZE, start_idx=0xFFFD)
    vq = drv.device_queue()
    for n in range(3 * QSIZE):
        head = drv.add([bytes([n])], [1])
        drv.kick()
        chain = pop_one(vq)
        assert chain.read_all() == bytes([n])
        vq.push(chain.head, chain.write_into(bytes([n ^ 0xFF])))
        assert drv.reap() == [(head, 1, bytes([n ^ 0xFF]))]
    assert vq.last_avail_idx == (0xFFFD + 3 * QSIZE) & 0xFFFF == vq.used_idx
    vq.close()


def test_full_queue_of_outstanding_chains(drv, vq):
    heads = [drv.add([b"x"], []) for _ in range(QSIZE)]
    drv.kick()
    chains = [pop_one(vq) for _ in range(QSIZE)]
    assert [c.head for c in chains] == heads and vq.pop() is None
    for c in reversed(chains):       # out-of-order completion is legal (2.7.8)
        vq.push(c.head, 0)
    assert [h for h, _, _ in drv.reap()] == heads[::-1]


def test_chain_as_long_as_the_table_is_legal(drv, vq):
    drv.add([b"a"] * QSIZE, [])
    drv.kick()
    assert len(pop_one(vq).readable) == QSIZE


def test_direct_descriptors_may_precede_one_indirect(drv, vq, mem):
    # 2.7.5.3.2: the device MUST handle zero or more direct descriptors followed by a single
    # indirect one; the indirect one's VIRTQ_DESC_F_WRITE is ignored.
    table, data = 0x8000, 0x9000
    mem.write(data, b"abcd")
    mem.write(table, bytes(32))
    drv.write_desc(0, data, 2, NEXT, 1)
    drv.write_desc(1, table, 32, INDIRECT | WRITE)
    mem.pack(DESC, table, data + 2, 2, NEXT, 1)
    mem.pack(DESC, table + 16, data + 0x100, 8, WRITE, 0)
    offer(drv, 0)
    chain = pop_one(vq)
    assert chain.read_all() == b"abcd"
    assert chain.writable_ranges == [(data + 0x100, 8)]


def test_zero_length_buffer_is_legal(drv, vq):
    drv.write_desc(0, 0x8000, 0, 0)
    offer(drv, 0)
    assert pop_one(vq).readable_ranges == [(0x8000, 0)]


# -- guest input rules: one per error -------------------------------------------------------------

def test_avail_index_may_not_move_more_than_queue_size(drv, vq):
    drv.write_avail_idx(QSIZE + 1)
    with pytest.raises(AvailIndexJump) as exc:
        vq.pop()
    msg = str(exc.value)
    assert "0x0" in msg and "0x9" in msg and "(2.7.6)" in msg
    with pytest.raises(AvailIndexJump):
        vq.has_available()
    assert vq.last_avail_idx == 0     # the ring is broken, nothing was consumed


def test_avail_index_jump_is_measured_modulo_2_16(mem):
    drv = FakeDriver.modern(mem, QSIZE, start_idx=0xFFFE)
    vq = drv.device_queue()
    drv.write_avail_idx(0xFFFE + QSIZE)          # wraps to 6: exactly QSIZE entries, legal
    assert vq.has_available()
    drv.write_avail_idx(0xFFFD)                  # moved "backwards": 0xffff entries
    with pytest.raises(AvailIndexJump):
        vq.pop()
    vq.close()


def test_head_index_must_be_inside_table(drv, vq):
    offer(drv, QSIZE)
    with pytest.raises(HeadIndexOutOfRange, match=r"head descriptor 0x8.*size 0x8 \(2\.7\.6\)"):
        vq.pop()


def test_next_index_must_be_inside_table(drv, vq):
    drv.write_desc(0, 0x8000, 1, NEXT, QSIZE)
    offer(drv, 0)
    with pytest.raises(NextIndexOutOfRange, match=r"next 0x8, outside the descriptor table"):
        vq.pop()


def test_next_index_must_be_inside_indirect_table(drv, vq, mem):
    drv.write_desc(0, 0x8000, 32, INDIRECT)
    drv.write_raw(0x8000, bytes(32))
    mem.pack(DESC, 0x8000, 0x9000, 1, NEXT, 2)
    offer(drv, 0)
    with pytest.raises(NextIndexOutOfRange, match=r"indirect table of size 0x2"):
        vq.pop()


@pytest.mark.parametrize("links", [[0], [1, 0], [1, 2, 3, 4, 5, 6, 7, 1]])
def test_descriptor_loop_is_refused(drv, vq, links):
    for i, nxt in enumerate(links):
        drv.write_desc(i, 0x8000, 1, NEXT, nxt)
    offer(drv, 0)
    with pytest.raises(DescriptorLoop, match=r"longer than its descriptor table \(0x8"):
        vq.pop()


def test_descriptor_loop_in_indirect_table_is_refused(drv, vq, mem):
    drv.write_desc(0, 0x8000, 32, INDIRECT)
    mem.pack(DESC, 0x8000, 0x9000, 1, NEXT, 1)
    mem.pack(DESC, 0x8010, 0x9000, 1, NEXT, 0)
    offer(drv, 0)
    with pytest.raises(DescriptorLoop, match="indirect table"):
        vq.pop()


@pytest.mark.parametrize("indirect", [False, True])
def test_readable_after_writable_is_refused(mem, indirect):
    drv = FakeDriver.modern(mem, QSIZE)
    vq = drv.device_queue()
    head = drv.add([b"r"], [1], indirect=indirect)
    posted = drv.posted(head)
    if indirect:
        table = posted.indirect_table[0]
        mem.pack(DESC, table, *posted.writable[0], WRITE | NEXT, 1)
        mem.pack(DESC, table + 16, *posted.readable[0], 0, 0)
    else:
        first, second = posted.descriptors
        drv.write_desc(first, *posted.writable[0], WRITE | NEXT, second)
        drv.write_desc(second, *posted.readable[0], 0)
    drv.kick()
    with pytest.raises(ReadableAfterWritable, match=r"device-readable descriptor 0x1 follows .*\(2\.7\.4\.2"):
        vq.pop()
    vq.close()


@pytest.mark.parametrize("length", [0, 8, 24, 0x1001])
def test_indirect_table_length_must_be_nonzero_multiple_of_16(drv, vq, length):
    drv.write_desc(0, 0x8000, length, INDIRECT)
    offer(drv, 0)
    with pytest.raises(IndirectTableLengthInvalid, match=rf"length {length:#x} .*\(2\.7\.5\.3\.1\)"):
        vq.pop()


def test_indirect_table_longer_than_the_queue_is_refused_before_it_is_walked(drv, vq, mem):
    # Entry 0 points at itself: without the bound the walk would map QSIZE + 1 buffers first.
    entries = QSIZE + 1
    for n in range(entries):
        mem.pack(DESC, 0x8000 + 16 * n, 0x9000, 1, NEXT, 0)
    drv.write_desc(0, 0x8000, entries * 16, INDIRECT)
    offer(drv, 0)
    with pytest.raises(IndirectTableTooLarge, match=rf"{entries:#x} descriptors is longer than the Queue Size "
                                                    rf"{QSIZE:#x}"):
        vq.pop()


def test_indirect_table_as_long_as_the_queue_is_a_chain(drv, vq, mem):
    for n in range(QSIZE):
        last = n == QSIZE - 1
        mem.pack(DESC, 0x8000 + 16 * n, 0x9000 + n, 1, WRITE | (0 if last else NEXT), 0 if last else n + 1)
    drv.write_desc(0, 0x8000, QSIZE * 16, INDIRECT)
    offer(drv, 0)
    assert len(vq.pop().writable) == QSIZE


def test_indirect_descriptor_may_not_set_next(drv, vq):
    drv.write_desc(0, 0x8000, 16, INDIRECT | NEXT, 1)
    drv.write_desc(1, 0x9000, 1, 0)
    offer(drv, 0)
    with pytest.raises(IndirectWithNext, match=r"both VIRTQ_DESC_F_INDIRECT and VIRTQ_DESC_F_NEXT"):
        vq.pop()


def test_indirect_inside_indirect_is_refused(drv, vq, mem):
    drv.write_desc(0, 0x8000, 16, INDIRECT)
    mem.pack(DESC, 0x8000, 0x9000, 16, INDIRECT, 0)
    offer(drv, 0)
    with pytest.raises(NestedIndirect, match=r"only one table per descriptor"):
        vq.pop()


@pytest.mark.parametrize("addr,length", [
    (MEM_SIZE, 1), (MEM_SIZE - 1, 2), (2**64 - 1, 2), (0, 2**32 - 1),
])
def test_buffer_must_lie_inside_guest_memory(drv, vq, addr, length):
    drv.write_desc(0, addr, length, WRITE)
    offer(drv, 0)
    with pytest.raises(BufferOutsideGuestMemory) as exc:
        vq.pop()
    assert f"{addr:#x}+{length:#x}" in str(exc.value)
    assert exc.value.__cause__ is not None     # chained from GuestMemory's OutsideGuestMemory


def test_indirect_table_must_lie_inside_guest_memory(drv, vq):
    drv.write_desc(0, MEM_SIZE - 16, 32, INDIRECT)
    offer(drv, 0)
    with pytest.raises(BufferOutsideGuestMemory, match="indirect table"):
        vq.pop()


def test_chain_may_not_exceed_2_32_bytes_in_total():
    # 2.7.5.2; overlapping buffers make it possible in a small guest.  Used len is le32, so a
    # longer chain could make a device report a length it cannot encode.
    size = 1 << 20
    with GuestMemory(size) as m:
        drv = FakeDriver.modern(m, 8192)        # a table of 4097 descriptors needs a queue that long
        vq = drv.device_queue()
        table, entries = 0x80000, (1 << 32) // size + 1
        for k in range(entries):
            m.pack(DESC, table + 16 * k, 0, size, NEXT if k + 1 < entries else 0, k + 1)
        drv.write_desc(0, table, 16 * entries, INDIRECT)
        offer(drv, 0)
        with pytest.raises(ChainTooLong, match=r"0x100100000 bytes, more than 0x100000000 \(2\.7\.5\.2\)"):
            vq.pop()
        # Exactly 2^32 bytes is legal.
        m.pack(DESC, table + 16 * (entries - 2), 0, size, 0, 0)
        offer(drv, 0, pos=1, idx=2)
        assert pop_one(vq).readable_len == 1 << 32
        vq.close()


def test_bad_chain_is_consumed_and_can_be_completed_empty(drv, vq):
    # Firecracker style: a device completes a malformed chain with zero length and carries on.
    drv.write_desc(0, 0x8000, 1, NEXT, 0)
    offer(drv, 0)
    with pytest.raises(ChainError) as exc:
        vq.pop()
    assert exc.value.head == 0 and vq.last_avail_idx == 1
    vq.push(exc.value.head, 0)
    assert vq.pop() is None
    assert vq.used_idx == 1


def test_push_refuses_device_bugs(vq):
    with pytest.raises(ValueError):
        vq.push(QSIZE, 0)
    with pytest.raises(ValueError):
        vq.push(0, 2**32)


# -- used buffer notifications (2.7.7.2) -----------------------------------------------------------

def round_trip(drv, vq, n=1):
    for _ in range(n):
        drv.add([b"x"], [1])
    drv.kick()
    for _ in range(n):
        vq.push(pop_one(vq).head, 1)


def test_interrupt_by_default(drv, vq):
    round_trip(drv, vq)
    assert vq.needs_interrupt()


def test_no_interrupt_when_nothing_was_used(drv, vq):
    assert not vq.needs_interrupt()
    round_trip(drv, vq)
    assert vq.needs_interrupt()
    assert not vq.needs_interrupt()     # already decided for those pushes


def test_avail_f_no_interrupt_suppresses(drv, vq):
    drv.set_no_interrupt(True)
    round_trip(drv, vq)
    assert not vq.needs_interrupt()
    drv.set_no_interrupt(False)
    round_trip(drv, vq)
    assert vq.needs_interrupt()


def test_notify_on_empty_overrides_no_interrupt_when_ring_empty(drv):
    vq = drv.device_queue(notify_on_empty=True)
    drv.set_no_interrupt(True)
    round_trip(drv, vq)
    assert vq.needs_interrupt()          # ring ran dry: VIRTIO_F_NOTIFY_ON_EMPTY


def test_notify_on_empty_does_not_fire_while_buffers_remain(drv):
    vq = drv.device_queue(notify_on_empty=True)
    drv.set_no_interrupt(True)
    drv.add([b"x"], [1])
    drv.add([b"y"], [1])
    drv.kick()
    vq.push(pop_one(vq).head, 1)
    assert not vq.needs_interrupt()


def test_notify_on_empty_off_respects_no_interrupt(drv, vq):
    drv.set_no_interrupt(True)
    round_trip(drv, vq)
    assert not vq.needs_interrupt()


@pytest.fixture
def edrv(mem):
    return FakeDriver.modern(mem, QSIZE, event_idx=True)


def test_event_idx_interrupts_when_used_idx_passes_used_event(edrv):
    vq = edrv.device_queue()
    edrv.set_used_event(0)                # "tell me once entry 0 is used"
    round_trip(edrv, vq)
    assert vq.needs_interrupt()


def test_event_idx_interrupts_when_batch_crosses_used_event(edrv):
    vq = edrv.device_queue()
    edrv.set_used_event(2)
    round_trip(edrv, vq, n=4)             # used idx 0 -> 4 passes 2
    assert vq.needs_interrupt()


def test_event_idx_no_interrupt_before_used_event(edrv):
    vq = edrv.device_queue()
    edrv.set_used_event(3)
    round_trip(edrv, vq, n=3)             # used idx 0 -> 3: entry 3 not yet used
    assert not vq.needs_interrupt()
    round_trip(edrv, vq)                  # 3 -> 4
    assert vq.needs_interrupt()


def test_event_idx_ignores_avail_f_no_interrupt(edrv):
    vq = edrv.device_queue()
    edrv.set_no_interrupt(True)           # 2.7.7.2: the device MUST ignore the lower bit of flags
    edrv.set_used_event(0)
    round_trip(edrv, vq)
    assert vq.needs_interrupt()


def test_event_idx_across_wrap(mem):
    drv = FakeDriver.modern(mem, QSIZE, event_idx=True, start_idx=0xFFFE)
    vq = drv.device_queue()
    drv.set_used_event(0x0001)
    round_trip(drv, vq, n=2)              # 0xfffe -> 0x0000: not yet
    assert not vq.needs_interrupt()
    round_trip(drv, vq, n=2)              # 0x0000 -> 0x0002: passes 0x0001
    assert vq.needs_interrupt()


def test_event_idx_with_notify_on_empty(edrv):
    vq = edrv.device_queue(notify_on_empty=True)
    edrv.set_used_event(5)
    round_trip(edrv, vq)
    assert vq.needs_interrupt()


def test_vring_need_event_matches_linux():
    # Linux include/uapi/linux/virtio_ring.h examples
    assert vring_need_event(0, 1, 0)
    assert not vring_need_event(1, 1, 0)
    assert vring_need_event(0xFFFF, 0, 0xFFFF)
    assert not vring_need_event(5, 5, 5)


# -- available buffer notifications (2.7.7.1, 2.7.10) ---------------------------------------------

def test_driver_kicks_by_default(drv, vq):
    drv.add([b"x"], [])
    assert drv.kick() and drv.kicks == 1


def test_used_f_no_notify_suppresses_kicks(drv, vq, mem):
    vq.suppress_notifications(True)
    assert drv.used_flags & VIRTQ_USED_F_NO_NOTIFY
    drv.add([b"x"], [])
    assert not drv.kick()
    vq.suppress_notifications(False)
    assert not drv.used_flags & VIRTQ_USED_F_NO_NOTIFY
    assert vq.has_available()           # the re-check after re-enabling finds the buffer
    drv.add([b"y"], [])
    assert drv.kick()


def test_event_idx_avail_event_tracks_last_avail(edrv):
    vq = edrv.device_queue()
    edrv.add([b"x"], [])
    assert edrv.kick()                    # avail_event 0: the first entry deserves a kick
    pop_one(vq)
    assert edrv.avail_event == vq.last_avail_idx == 1
    edrv.add([b"y"], [])
    assert edrv.kick()


def test_event_idx_suppression_stops_kicks(edrv):
    vq = edrv.device_queue()
    vq.suppress_notifications(True)
    assert vq.notifications_suppressed
    for n in range(3):
        edrv.add([bytes([n])], [])
        assert not edrv.kick()
    while vq.pop() is not None:
        pass
    vq.suppress_notifications(False)
    assert edrv.avail_event == vq.last_avail_idx == 3
    edrv.add([b"z"], [])
    assert edrv.kick()


@pytest.mark.parametrize("event_idx", [False, True])
def test_enable_notifications_rearms_fences_then_looks_again(mem, event_idx):
    drv = FakeDriver.modern(mem, QSIZE, event_idx=event_idx)
    vq = drv.device_queue()
    order = []
    vq.fence = lambda: order.append(("fence", drv.avail_event if event_idx else drv.used_flags))
    vq.suppress_notifications(True)
    drv.add([b"x"], [])
    assert not drv.kick()                 # suppressed: the driver publishes without kicking
    assert vq.enable_notifications()      # ... and the re-check finds it
    rearmed = vq.last_avail_idx if event_idx else 0
    assert order == [("fence", rearmed)]  # the store was made before the fence, the load after
    pop_one(vq)
    assert not vq.enable_notifications()  # empty: sleep, the next buffer will be kicked
    drv.add([b"y"], [])
    assert drv.kick()
    vq.close()


def test_enable_notifications_refuses_a_broken_avail_index(drv, vq):
    drv.write_avail_idx(QSIZE + 1)
    with pytest.raises(AvailIndexJump):
        vq.enable_notifications()


def test_needs_interrupt_fences_before_reading_what_the_driver_asked(edrv):
    vq = edrv.device_queue()
    seen = []
    vq.fence = lambda: seen.append(edrv.used_idx)
    assert not vq.needs_interrupt() and seen == []     # nothing pushed: no decision, no fence
    round_trip(edrv, vq)
    assert vq.needs_interrupt()
    assert seen == [1]                    # fenced after used->idx was stored, before used_event
    vq.close()


def test_event_idx_kick_only_when_crossing_avail_event(edrv):
    vq = edrv.device_queue()
    edrv.add([b"a"], [])
    edrv.kick()                           # device has not popped: avail_event still 0
    edrv.add([b"b"], [])
    assert not edrv.kick()                # 1 -> 2 does not cross 0
    vq.close()


# -- fake driver --------------------------------------------------------------------------------------

def test_driver_refuses_when_descriptors_run_out(drv):
    for _ in range(QSIZE):
        drv.add([b"x"], [])
    with pytest.raises(DriverError):
        drv.add([b"x"], [])


def test_driver_refuses_unknown_used_head(drv, vq):
    drv.add([b"x"], [1])
    drv.kick()
    pop_one(vq)
    vq.push(5, 0)
    with pytest.raises(DriverError, match="not outstanding"):
        drv.reap()


def test_driver_repost_reuses_chains(drv, vq):
    head = drv.add([b"x"], [1])
    for _ in range(3 * QSIZE):
        drv.kick()
        c = pop_one(vq)
        vq.push(c.head, 0)
        assert drv.reap(keep=True) == [(head, 0, b"")]
        drv.repost(head)
