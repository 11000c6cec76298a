"""Split virtqueue engine, device side (virtio 1.x, section 2.7; legacy layout in 2.7.2).

The driver (guest) owns the descriptor table and the available ring; we, the device,
own the used ring.  Everything we read from guest-owned parts is hostile input: each
broken rule raises its own VirtqueueError subclass, whose message names the rule, the
spec section and the values in hex.  No other exception can escape pop().

Memory access: the three rings are checked once, at construction, and kept as
zero-copy views obtained from GuestMemory.view (the one door); after that the hot
path indexes them with precompiled structs and indices it has already range-checked.
Every data buffer and indirect table the guest names goes through GuestMemory.view,
which refuses anything outside guest memory.

Ordering: we read avail->idx before the ring entries and descriptors it publishes, and
write used ring elements before used->idx.  CPython issues these loads and stores in
program order and each is a separate C call: load->load and store->store order is what
x86 (TSO) keeps by itself.  It does not keep store->load order: a load may complete while
an earlier store still waits in the store buffer, unseen by the vCPU.  The two places where
the protocol needs exactly that order get a real fence (self.fence, launcher.barrier):
enable_notifications() between the avail_event/flags store and the re-read of avail->idx
(2.7.10), and needs_interrupt() between the used->idx store and the read of used_event/flags
(2.7.7.2).  A weakly ordered host would need more fences than these two.

Index arithmetic is modulo 2^16 throughout (2.7.6, 2.7.8: idx "wraps naturally").
"""
from __future__ import annotations

import struct
import sys
from enum import IntFlag

from launcher.barrier import full_fence
from launcher.errors import OutsideGuestMemory, VirtqueueError
from launcher.memory import GuestMemory

__all__ = [
    "VirtqDescFlags", "VirtqAvailFlags", "VirtqUsedFlags",
    "VIRTQ_DESC_F_NEXT", "VIRTQ_DESC_F_WRITE", "VIRTQ_DESC_F_INDIRECT",
    "VIRTQ_AVAIL_F_NO_INTERRUPT", "VIRTQ_USED_F_NO_NOTIFY",
    "MAX_QUEUE_SIZE", "MAX_CHAIN_BYTES", "DESC_SIZE", "DESC", "USED_ELEM",
    "desc_table_size", "avail_ring_size", "used_ring_size", "legacy_layout", "legacy_size",
    "vring_need_event",
    "SplitVirtqueue", "Chain",
    "VirtqueueLayoutError", "QueueSizeInvalid", "RingAlignmentInvalid", "RingMisaligned",
    "RingOutsideGuestMemory", "AvailIndexJump", "HeadIndexOutOfRange", "ChainError",
    "NextIndexOutOfRange", "DescriptorLoop", "ReadableAfterWritable",
    "IndirectTableLengthInvalid", "IndirectWithNext", "NestedIndirect",
    "BufferOutsideGuestMemory", "ChainTooLong",
]


# -- wire layout (2.7.5, 2.7.6, 2.7.8) ----------------------------------------------------------

class VirtqDescFlags(IntFlag):
    """struct virtq_desc.flags (2.7.5)."""
    VIRTQ_DESC_F_NEXT = 1       # the chain continues via the `next` field
    VIRTQ_DESC_F_WRITE = 2      # device-writable (otherwise device-readable)
    VIRTQ_DESC_F_INDIRECT = 4   # the buffer is a table of descriptors (2.7.5.3)


class VirtqAvailFlags(IntFlag):
    """struct virtq_avail.flags (2.7.6); ignored by the device under VIRTIO_F_EVENT_IDX."""
    VIRTQ_AVAIL_F_NO_INTERRUPT = 1


class VirtqUsedFlags(IntFlag):
    """struct virtq_used.flags (2.7.8); not used by the device under VIRTIO_F_EVENT_IDX."""
    VIRTQ_USED_F_NO_NOTIFY = 1


VIRTQ_DESC_F_NEXT = VirtqDescFlags.VIRTQ_DESC_F_NEXT
VIRTQ_DESC_F_WRITE = VirtqDescFlags.VIRTQ_DESC_F_WRITE
VIRTQ_DESC_F_INDIRECT = VirtqDescFlags.VIRTQ_DESC_F_INDIRECT
VIRTQ_AVAIL_F_NO_INTERRUPT = VirtqAvailFlags.VIRTQ_AVAIL_F_NO_INTERRUPT
VIRTQ_USED_F_NO_NOTIFY = VirtqUsedFlags.VIRTQ_USED_F_NO_NOTIFY

# Plain ints for the hot path: IntFlag arithmetic costs a Python call per operation.
_F_NEXT = int(VIRTQ_DESC_F_NEXT)
_F_WRITE = int(VIRTQ_DESC_F_WRITE)
_F_INDIRECT = int(VIRTQ_DESC_F_INDIRECT)
_F_NO_INTERRUPT = int(VIRTQ_AVAIL_F_NO_INTERRUPT)
_F_NO_NOTIFY = int(VIRTQ_USED_F_NO_NOTIFY)

MAX_QUEUE_SIZE = 32768          # 2.7: "The maximum Queue Size value is 32768"
MAX_CHAIN_BYTES = 1 << 32       # 2.7.5.2: no chain longer than 2^32 bytes in total
DESC = struct.Struct("<QIHH")   # struct virtq_desc: le64 addr, le32 len, le16 flags, le16 next
DESC_SIZE = DESC.size           # 16
USED_ELEM = struct.Struct("<II")  # struct virtq_used_elem: le32 id, le32 len
_USED_RING = 4                  # byte offset of the used ring's elements (2.7.8)

# The rings' le16 fields as indices of a memoryview cast to "H".  The driver reads and writes
# them while we do, so each access must be ONE 16-bit load or store.  struct.pack_into is not:
# it zeroes its destination before packing, so a used->idx published with it read 0 for an
# instant, and a driver spinning on it took a stale used element ("output:id 0 is not a head!",
# seen on ordinary KVM: the console's transmitq broke and the guest spun in put_chars with
# interrupts off).  A memoryview of format "H" stores and loads a whole native u16, and the
# native order is virtio's little-endian on the hosts KVM and lguest run on.
_FLAGS16, _IDX16, _RING16 = 0, 1, 2
assert sys.byteorder == "little", "the virtqueue's 16-bit ring fields are accessed in native order"

# 2.7, table "Virtqueue Part / Alignment": descriptor table 16, available ring 2, used ring 4.
DESC_ALIGN, AVAIL_ALIGN, USED_ALIGN = 16, 2, 4


def desc_table_size(size: int) -> int:
    return DESC_SIZE * size


def avail_ring_size(size: int) -> int:
    """flags, idx, ring[size], used_event: 6 + 2*size (2.7), whether or not EVENT_IDX is on."""
    return 6 + 2 * size


def used_ring_size(size: int) -> int:
    """flags, idx, ring[size], avail_event: 6 + 8*size (2.7)."""
    return 6 + USED_ELEM.size * size


def _align_up(value: int, align: int) -> int:
    return (value + align - 1) & ~(align - 1)


def legacy_layout(size: int, base_addr: int, align: int = 4096) -> tuple[int, int, int]:
    """(desc, avail, used) addresses of the legacy single-area layout (2.7.2, vring_init)."""
    desc = base_addr
    avail = desc + desc_table_size(size)
    used = _align_up(avail + avail_ring_size(size), align)
    return desc, avail, used


def legacy_size(size: int, align: int = 4096) -> int:
    """Bytes the legacy layout occupies from its base (vring_size)."""
    _, _, used = legacy_layout(size, 0, align)
    return used + used_ring_size(size)


def vring_need_event(event_idx: int, new_idx: int, old_idx: int) -> bool:
    """True when event_idx lies in [old_idx, new_idx) modulo 2^16 (2.7.7.2, 2.7.10).

    The other side asked to be told once the index moves past event_idx; we moved it
    from old_idx to new_idx.
    """
    return ((new_idx - event_idx - 1) & 0xFFFF) < ((new_idx - old_idx) & 0xFFFF)


# -- errors -----------------------------------------------------------------------------------

class VirtqueueLayoutError(VirtqueueError):
    """The queue's size or ring addresses break the layout rules (2.7)."""


class QueueSizeInvalid(VirtqueueLayoutError):
    def __init__(self, size):
        self.size = size
        super().__init__(
            f"queue size {_hex(size)} must be a power of two between 0x1 and {MAX_QUEUE_SIZE:#x} (2.7)"
        )


class RingAlignmentInvalid(VirtqueueLayoutError):
    def __init__(self, align):
        self.align = align
        super().__init__(f"legacy ring alignment {_hex(align)} must be a power of two (2.7.2)")


class RingMisaligned(VirtqueueLayoutError):
    def __init__(self, ring: str, addr: int, align: int):
        self.ring, self.addr, self.align = ring, addr, align
        super().__init__(f"{ring} at {_hex(addr)} is not aligned to {align:#x} (2.7, alignment table)")


class RingOutsideGuestMemory(VirtqueueLayoutError):
    def __init__(self, ring: str, addr: int, length: int, mem_size: int):
        self.ring, self.addr, self.length = ring, addr, length
        super().__init__(
            f"{ring} {_hex(addr)}+{length:#x} is outside guest memory (0..{mem_size:#x}) (2.7)"
        )


class AvailIndexJump(VirtqueueError):
    """avail->idx ran ahead of us by more than the queue holds."""

    def __init__(self, last_avail_idx: int, avail_idx: int, size: int):
        self.last_avail_idx, self.avail_idx, self.size = last_avail_idx, avail_idx, size
        super().__init__(
            f"available ring idx moved from {last_avail_idx:#x} to {avail_idx:#x}: "
            f"{(avail_idx - last_avail_idx) & 0xFFFF:#x} entries, more than the queue size {size:#x} (2.7.6)"
        )


class HeadIndexOutOfRange(VirtqueueError):
    """The available ring names a descriptor that is not in the table."""

    def __init__(self, head: int, ring_pos: int, size: int):
        self.head, self.ring_pos, self.size = head, ring_pos, size
        super().__init__(
            f"available ring entry {ring_pos:#x} names head descriptor {head:#x}, "
            f"outside the descriptor table of size {size:#x} (2.7.6)"
        )


class ChainError(VirtqueueError):
    """A descriptor chain breaks a rule; `head` is its head index, already consumed.

    pop() has moved past the chain, so a device may complete it with push(head, 0)
    and carry on, or mark itself DEVICE_NEEDS_RESET.
    """

    def __init__(self, head: int, message: str):
        self.head = head
        super().__init__(f"chain at head {head:#x}: {message}")


class NextIndexOutOfRange(ChainError):
    def __init__(self, head: int, index: int, next_index: int, table_size: int, indirect: bool):
        self.index, self.next_index = index, next_index
        where = "indirect table" if indirect else "descriptor table"
        super().__init__(head, f"descriptor {index:#x} has next {next_index:#x}, outside the {where} "
                               f"of size {table_size:#x} (2.7.5)")


class DescriptorLoop(ChainError):
    def __init__(self, head: int, table_size: int, indirect: bool):
        where = "indirect table" if indirect else "descriptor table"
        super().__init__(head, f"chain is longer than its {where} ({table_size:#x} descriptors): "
                               f"a loop (2.7.5.2: no chain longer than the Queue Size)")


class ReadableAfterWritable(ChainError):
    def __init__(self, head: int, index: int):
        self.index = index
        super().__init__(head, f"device-readable descriptor {index:#x} follows a device-writable one "
                               f"(2.7.4.2: readable descriptors come first)")


class IndirectTableLengthInvalid(ChainError):
    def __init__(self, head: int, length: int):
        self.length = length
        super().__init__(head, f"indirect table length {length:#x} is not a non-zero multiple of "
                               f"{DESC_SIZE:#x} (2.7.5.3.1)")


class IndirectTableTooLarge(ChainError):
    def __init__(self, head: int, entries: int, queue_size: int):
        self.entries = entries
        super().__init__(head, f"indirect table of {entries:#x} descriptors is longer than the Queue Size "
                               f"{queue_size:#x} (2.7.5.3.1, 2.7.5.2: no chain longer than the Queue Size)")


class IndirectWithNext(ChainError):
    def __init__(self, head: int, index: int):
        self.index = index
        super().__init__(head, f"descriptor {index:#x} sets both VIRTQ_DESC_F_INDIRECT and "
                               f"VIRTQ_DESC_F_NEXT (2.7.5.3.1)")


class NestedIndirect(ChainError):
    def __init__(self, head: int, index: int):
        self.index = index
        super().__init__(head, f"indirect descriptor {index:#x} sets VIRTQ_DESC_F_INDIRECT: "
                               f"only one table per descriptor (2.7.5.3.1)")


class BufferOutsideGuestMemory(ChainError):
    def __init__(self, head: int, what: str, addr: int, length: int, mem_size: int):
        self.addr, self.length = addr, length
        super().__init__(head, f"{what} {addr:#x}+{length:#x} is outside guest memory "
                               f"(0..{mem_size:#x}) (2.7.5)")


class ChainTooLong(ChainError):
    def __init__(self, head: int, total: int):
        self.total = total
        super().__init__(head, f"buffers total {total:#x} bytes, more than {MAX_CHAIN_BYTES:#x} "
                               f"(2.7.5.2)")


def _hex(value) -> str:
    return f"{value:#x}" if isinstance(value, int) else repr(value)


# -- chains -----------------------------------------------------------------------------------
def scatter(views, data, offset: int = 0) -> int:
    """Copy data into a list of buffers, in order, from byte `offset` of their concatenation.

    Stops when data or the buffers run out; returns how many bytes were copied.
    """
    src = memoryview(data).cast("B")
    done = 0
    for buf in views:
        n = len(buf)
        if offset >= n:
            offset -= n
            continue
        take = min(n - offset, len(src) - done)
        buf[offset:offset + take] = src[done:done + take]
        done += take
        offset = 0
        if done == len(src):
            break
    return done


class Chain:
    """One popped descriptor chain: zero-copy views of its buffers, readable ones first.

    The views alias guest memory: the guest may change the bytes under us, so a device
    that parses a header should copy it (read_all) before trusting it.
    """

    __slots__ = ("head", "readable", "writable", "readable_ranges", "writable_ranges")

    def __init__(self, head: int, readable: list, writable: list,
                 readable_ranges: list, writable_ranges: list):
        self.head = head
        self.readable: list[memoryview] = readable
        self.writable: list[memoryview] = writable
        self.readable_ranges: list[tuple[int, int]] = readable_ranges
        self.writable_ranges: list[tuple[int, int]] = writable_ranges

    @property
    def readable_len(self) -> int:
        return sum(length for _, length in self.readable_ranges)

    @property
    def writable_len(self) -> int:
        return sum(length for _, length in self.writable_ranges)

    def read_all(self) -> bytes:
        """A copy of every readable buffer, gathered in chain order."""
        return b"".join(self.readable)

    def write_into(self, data, offset: int = 0) -> int:
        """Scatter data into the writable buffers from byte `offset`; returns bytes written.

        Stops when data or the writable space runs out, so the return value is what the
        device should report as the used length (when it writes nothing else).
        """
        return scatter(self.writable, data, offset)

    def release(self) -> None:
        """Drop the views so guest memory can be closed while this object lives on."""
        for view in self.readable:
            view.release()
        for view in self.writable:
            view.release()
        self.readable, self.writable = [], []

    def __repr__(self) -> str:
        return (f"Chain(head={self.head:#x}, readable={[(hex(a), n) for a, n in self.readable_ranges]}, "
                f"writable={[(hex(a), n) for a, n in self.writable_ranges]})")


# -- the engine -------------------------------------------------------------------------------

class SplitVirtqueue:
    """Device side of one split virtqueue in `memory`.

    Typical device loop:

        while True:
            while (chain := vq.pop()) is not None:
                written = serve(chain)
                vq.push(chain.head, written)
            if not vq.enable_notifications():   # ask for a kick, fence, look again (2.7.10)
                break                           # really empty: sleep until the next kick
        if vq.needs_interrupt():                # fence, then used_event / flags (2.7.7.2)
            trigger()

    Not thread-safe: one thread (or one lock) per queue.
    """

    def __init__(self, memory: GuestMemory, size: int, desc_addr: int, avail_addr: int,
                 used_addr: int, event_idx: bool = False, *, notify_on_empty: bool = False):
        """event_idx: VIRTIO_F_EVENT_IDX negotiated.  notify_on_empty: legacy
        VIRTIO_F_NOTIFY_ON_EMPTY negotiated (interrupt when the avail ring runs dry even if
        the driver suppressed interrupts)."""
        _check_size(size)
        self.memory = memory
        self.size = size
        self.desc_addr, self.avail_addr, self.used_addr = desc_addr, avail_addr, used_addr
        self.event_idx = bool(event_idx)
        self.notify_on_empty = bool(notify_on_empty)
        self._mask = size - 1
        rings = [("descriptor table", desc_addr, desc_table_size(size), DESC_ALIGN),
                 ("available ring", avail_addr, avail_ring_size(size), AVAIL_ALIGN),
                 ("used ring", used_addr, used_ring_size(size), USED_ALIGN)]
        for ring in rings:      # all checks before any view, so a refusal leaves no export behind
            _check_ring(memory, *ring)
        self._desc, self._avail, self._used = (memory.view(addr, length) for _, addr, length, _ in rings)
        self._avail16, self._used16 = self._avail.cast("H"), self._used.cast("H")
        self._used_event16 = _RING16 + size                         # avail->ring[size]
        self._avail_event16 = (_USED_RING + USED_ELEM.size * size) // 2   # after used->ring[size]
        self.last_avail_idx = 0     # next available ring entry we will read
        self._used_idx = 0          # next used ring entry we will write; ours, never read back
        self._signalled_used = 0    # used idx when we last decided about an interrupt
        self._pending_used = 0      # pushes since that decision
        self._notify_enabled = True
        self._used_flags = 0
        # The store->load barrier of the notification protocol (launcher.barrier); tests
        # substitute a model of a store buffer.
        self.fence = full_fence
        # The device owns the used ring's flags and avail_event: start them in a known state
        # (used->idx is left alone; set_indices publishes it when resuming mid-stream).
        self._used16[_FLAGS16] = 0
        if self.event_idx:
            self._used16[self._avail_event16] = 0

    @classmethod
    def legacy(cls, memory: GuestMemory, size: int, base_addr: int, align: int = 4096,
               event_idx: bool = False, *, notify_on_empty: bool = False) -> "SplitVirtqueue":
        """A queue in the legacy single-area layout (2.7.2; lguest uses align=4096)."""
        _check_size(size)
        if not isinstance(align, int) or align < 1 or align & (align - 1):
            raise RingAlignmentInvalid(align)
        desc, avail, used = legacy_layout(size, base_addr, align)
        return cls(memory, size, desc, avail, used, event_idx, notify_on_empty=notify_on_empty)

    # -- indices ------------------------------------------------------------------------------
    @property
    def used_idx(self) -> int:
        """The used->idx we last published (the next used ring entry we will write)."""
        return self._used_idx

    def set_indices(self, last_avail_idx: int, used_idx: int) -> None:
        """Resume a queue mid-stream (e.g. after restore): set both indices and publish used->idx."""
        self.last_avail_idx = last_avail_idx & 0xFFFF
        self._used_idx = self._signalled_used = used_idx & 0xFFFF
        self._pending_used = 0
        self._used16[_IDX16] = self._used_idx
        if self.event_idx:
            self.suppress_notifications(not self._notify_enabled)

    # -- driver -> device ---------------------------------------------------------------------
    def _avail_pending(self) -> int:
        """Entries published and not yet popped; refuses a jump past the queue size (2.7.6)."""
        avail_idx = self._avail16[_IDX16]
        pending = (avail_idx - self.last_avail_idx) & 0xFFFF
        if pending > self.size:
            raise AvailIndexJump(self.last_avail_idx, avail_idx, self.size)
        return pending

    def has_available(self) -> bool:
        return self._avail_pending() != 0

    def pop(self) -> Chain | None:
        """The next available chain, or None when the available ring is empty.

        Raises AvailIndexJump or HeadIndexOutOfRange when the ring itself is broken, and a
        ChainError (with .head; the chain counts as consumed) when the chain is.
        """
        # _avail_pending() inlined: this is the hot path.
        last = self.last_avail_idx
        avail_idx = self._avail16[_IDX16]
        pending = (avail_idx - last) & 0xFFFF
        if not pending:
            return None
        if pending > self.size:
            raise AvailIndexJump(last, avail_idx, self.size)
        pos = last & self._mask
        head = self._avail16[_RING16 + pos]
        last = self.last_avail_idx = (last + 1) & 0xFFFF
        if self.event_idx and self._notify_enabled:
            # 2.7.10: ask for a kick only once the driver publishes past what we have seen.
            self._used16[self._avail_event16] = last
        if head >= self.size:
            raise HeadIndexOutOfRange(head, pos, self.size)
        return self._walk(head)

    def _walk(self, head: int) -> Chain:
        """Follow the chain from head, switching once into an indirect table (2.7.5.3)."""
        view = self.memory.view
        unpack = DESC.unpack_from
        table = self._desc
        table_size = self.size
        indirect = False
        readable, writable, readable_ranges, writable_ranges = [], [], [], []
        i = head
        ttl = table_size    # 2.7.5.2: a chain is never longer than its table; longer means a loop
        total = 0
        try:
            while True:
                addr, length, flags, next_index = unpack(table, i << 4)
                if flags & _F_INDIRECT:
                    # 2.7.5.3.2: zero or more direct descriptors may precede the single
                    # indirect one; its VIRTQ_DESC_F_WRITE is ignored.
                    if indirect:
                        raise NestedIndirect(head, i)
                    if flags & _F_NEXT:
                        raise IndirectWithNext(head, i)
                    if length == 0 or length & (DESC_SIZE - 1):
                        raise IndirectTableLengthInvalid(head, length)
                    if length >> 4 > self.size:     # bounds the walk below, whatever the guest claims
                        raise IndirectTableTooLarge(head, length >> 4, self.size)
                    try:
                        table = view(addr, length)
                    except OutsideGuestMemory as err:
                        raise BufferOutsideGuestMemory(head, "indirect table", addr, length,
                                                       self.memory.size) from err
                    indirect = True
                    table_size = ttl = length >> 4
                    i = 0
                    continue
                try:
                    buf = view(addr, length)
                except OutsideGuestMemory as err:
                    raise BufferOutsideGuestMemory(head, f"buffer of descriptor {i:#x}", addr, length,
                                                   self.memory.size) from err
                total += length
                if flags & _F_WRITE:
                    writable.append(buf)
                    writable_ranges.append((addr, length))
                else:
                    readable.append(buf)
                    readable_ranges.append((addr, length))
                    if writable:
                        raise ReadableAfterWritable(head, i)
                if not flags & _F_NEXT:
                    if total > MAX_CHAIN_BYTES:
                        raise ChainTooLong(head, total)
                    return Chain(head, readable, writable, readable_ranges, writable_ranges)
                ttl -= 1
                if ttl == 0:
                    raise DescriptorLoop(head, table_size, indirect)
                if next_index >= table_size:
                    raise NextIndexOutOfRange(head, i, next_index, table_size, indirect)
                i = next_index
        except ChainError:
            # The traceback keeps this frame alive; released views keep no export on
            # guest memory, so it can still be closed while the error is around.
            for buf in readable + writable:
                buf.release()
            if indirect:
                table.release()
            raise

    # -- device -> driver ---------------------------------------------------------------------
    def push(self, head: int, written: int) -> None:
        """Add used element (id=head, len=written), then publish used->idx (2.7.8).

        head and written come from the device, not the guest, so a bad value is a device
        bug and raises ValueError.
        """
        if not 0 <= head < self.size:
            raise ValueError(f"used id {head:#x} outside the descriptor table of size {self.size:#x}")
        if not 0 <= written <= 0xFFFFFFFF:
            raise ValueError(f"used len {written:#x} does not fit in le32")
        idx = self._used_idx
        USED_ELEM.pack_into(self._used, _USED_RING + 8 * (idx & self._mask), head, written)
        # The element must be visible before the index that publishes it (2.7.8.2).
        idx = self._used_idx = (idx + 1) & 0xFFFF
        self._used16[_IDX16] = idx
        self._pending_used += 1

    def needs_interrupt(self) -> bool:
        """Whether the pushes since the last call deserve a used-buffer notification (2.7.7.2).

        Nothing pushed: no.  VIRTIO_F_NOTIFY_ON_EMPTY and the available ring is empty:
        yes, whatever the driver asked.  With VIRTIO_F_EVENT_IDX: yes when used->idx passed
        used_event (vring_need_event).  Otherwise: unless VIRTQ_AVAIL_F_NO_INTERRUPT.
        """
        if not self._pending_used:
            return False
        self._pending_used = 0
        old, new = self._signalled_used, self._used_idx
        self._signalled_used = new
        # used->idx must be visible before we read what the driver asked for: the driver
        # writes used_event (or clears NO_INTERRUPT), fences, then re-reads used->idx.  With
        # our store still in flight both sides could read the other's old value, and the
        # driver would sleep on a used buffer with no interrupt coming (2.7.7.2).
        self.fence()
        if self.notify_on_empty and not self.has_available():
            return True
        if self.event_idx:
            return vring_need_event(self._avail16[self._used_event16], new, old)
        avail_flags = self._avail16[_FLAGS16]
        return not avail_flags & _F_NO_INTERRUPT

    def suppress_notifications(self, on: bool) -> None:
        """Ask the driver not to kick us (on=True), or to kick again (2.7.7.1, 2.7.10).

        Without EVENT_IDX this is VIRTQ_USED_F_NO_NOTIFY.  With it, avail_event is set to
        last_avail_idx when enabled (kick once the next entry is published) and to the
        entry before it when suppressed, an index the driver has already passed.
        Before sleeping, re-enable with enable_notifications(), which also fences and looks
        at the ring again: the driver may have published meanwhile.
        """
        self._notify_enabled = not on
        if self.event_idx:
            event = (self.last_avail_idx - 1) & 0xFFFF if on else self.last_avail_idx
            self._used16[self._avail_event16] = event
        else:
            self._used_flags = (self._used_flags | _F_NO_NOTIFY) if on else (self._used_flags & ~_F_NO_NOTIFY)
            self._used16[_FLAGS16] = self._used_flags

    def enable_notifications(self) -> bool:
        """Before sleeping: ask for a kick again, fence, and look at avail->idx once more.

        True means the driver published a buffer meanwhile: process it now, for its kick
        may have been decided against our old avail_event/flags.  False means the ring is
        empty and the driver will kick for the next buffer (2.7.10; vhost_enable_notify).
        The fence orders our avail_event/flags store before the avail->idx load, the mirror
        image of the driver's (store avail->idx, mb, load avail_event/flags).
        Raises AvailIndexJump, as pop() would, when avail->idx is broken.
        """
        self.suppress_notifications(False)
        self.fence()
        return self.has_available()

    @property
    def notifications_suppressed(self) -> bool:
        return not self._notify_enabled

    def describe(self) -> str:
        """Both sides' indices as guest memory holds them now: what a stalled queue is waiting for.

        A read-only look from any thread (a state dump); it may race with the service thread."""
        avail_idx, avail_flags = self._avail16[_IDX16], self._avail16[_FLAGS16]
        used_idx, used_flags = self._used16[_IDX16], self._used16[_FLAGS16]
        text = (f"avail idx {avail_idx} flags {avail_flags:#x}, last_avail_idx {self.last_avail_idx}; "
                f"used idx {used_idx} (ours {self._used_idx}) flags {used_flags:#x}, "
                f"signalled at {self._signalled_used}, {self._pending_used} pushed since")
        if self.event_idx:
            used_event, avail_event = self._avail16[self._used_event16], self._used16[self._avail_event16]
            text += f"; used_event {used_event}, avail_event {avail_event}"
        return text + ("" if self._notify_enabled else "; kicks suppressed")

    # -- life cycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Release the ring views so the guest memory can be closed."""
        for ring in (self._avail16, self._used16, self._desc, self._avail, self._used):
            ring.release()

    def __repr__(self) -> str:
        return (f"SplitVirtqueue(size={self.size:#x}, desc={self.desc_addr:#x}, avail={self.avail_addr:#x}, "
                f"used={self.used_addr:#x}, last_avail_idx={self.last_avail_idx:#x}, "
                f"used_idx={self._used_idx:#x}, event_idx={self.event_idx})")


def _check_size(size) -> None:
    if not isinstance(size, int) or not 1 <= size <= MAX_QUEUE_SIZE or size & (size - 1):
        raise QueueSizeInvalid(size)


def _check_ring(memory: GuestMemory, ring: str, addr, length: int, align: int) -> None:
    if not isinstance(addr, int) or addr % align:
        raise RingMisaligned(ring, addr, align)
    if not memory.contains(addr, length):
        raise RingOutsideGuestMemory(ring, addr, length, memory.size)
