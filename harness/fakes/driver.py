"""Fake guest driver: the guest side of one split virtqueue (virtio 1.x, 2.7).

Plays the part Linux's drivers/virtio/virtio_ring.c plays in a real guest, and
rust-vmm's MockSplitQueue plays in its tests: it lays out the rings in a GuestMemory
(modern or legacy layout), allocates data buffers and indirect tables from an arena,
posts chains, publishes them, decides whether to kick, and reaps used buffers.

It is a well-behaved driver by default.  For hostile-guest tests it also writes raw
descriptors, ring entries and bytes anywhere in its rings (write_desc, write_avail_entry,
write_avail_idx, write_raw).

    mem = GuestMemory(1 << 20)
    drv = FakeDriver.modern(mem, 256)
    vq = drv.device_queue()
    head = drv.add([b"request"], [512])
    drv.kick()
    chain = vq.pop(); vq.push(chain.head, chain.write_into(b"reply"))
    assert drv.reap() == [(head, 5, b"reply")]
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Callable

from launcher.devices.base import DeviceStatus
from launcher.memory import GuestMemory
from launcher.virtqueue import (
    AVAIL_ALIGN, DESC, DESC_ALIGN, DESC_SIZE, USED_ALIGN, USED_ELEM,
    VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
    VIRTQ_USED_F_NO_NOTIFY, SplitVirtqueue, avail_ring_size, desc_table_size, legacy_layout,
    legacy_size, used_ring_size, vring_need_event,
)

_NEXT, _WRITE, _INDIRECT = int(VIRTQ_DESC_F_NEXT), int(VIRTQ_DESC_F_WRITE), int(VIRTQ_DESC_F_INDIRECT)
_ARENA_ALIGN = 16   # indirect tables need 16 (2.7.5.3); data buffers do not care


class DriverError(Exception):
    """The fake driver was misused, ran out of room, or saw the device break a rule."""


class QueueFull(DriverError):
    """Not enough free descriptors or arena space for the chain."""


class Arena:
    """First-fit allocator over a range of guest-physical addresses (16-byte granules)."""

    def __init__(self, start: int, length: int):
        start_aligned = (start + _ARENA_ALIGN - 1) & ~(_ARENA_ALIGN - 1)
        length -= start_aligned - start
        if length <= 0:
            raise DriverError(f"arena {start:#x}+{length:#x} is empty")
        self.start, self.length = start_aligned, length
        self._starts = [start_aligned]    # sorted free extents: starts and matching lengths
        self._lengths = [length]

    @staticmethod
    def _round(length: int) -> int:
        return max(_ARENA_ALIGN, (length + _ARENA_ALIGN - 1) & ~(_ARENA_ALIGN - 1))

    def alloc(self, length: int) -> int:
        need = self._round(length)
        for k, avail in enumerate(self._lengths):
            if avail >= need:
                addr = self._starts[k]
                if avail == need:
                    del self._starts[k], self._lengths[k]
                else:
                    self._starts[k] += need
                    self._lengths[k] -= need
                return addr
        raise QueueFull(f"arena has no free extent of {need:#x} bytes")

    def free(self, addr: int, length: int) -> None:
        size = self._round(length)
        k = bisect.bisect_left(self._starts, addr)
        self._starts.insert(k, addr)
        self._lengths.insert(k, size)
        # Merge with the following and the preceding extents.
        if k + 1 < len(self._starts) and addr + size == self._starts[k + 1]:
            self._lengths[k] += self._lengths.pop(k + 1)
            del self._starts[k + 1]
        if k > 0 and self._starts[k - 1] + self._lengths[k - 1] == addr:
            self._lengths[k - 1] += self._lengths.pop(k)
            del self._starts[k]

    @property
    def free_bytes(self) -> int:
        return sum(self._lengths)


@dataclass
class PostedChain:
    """What the driver put behind one head: buffer ranges as the device should see them."""
    head: int
    readable: list[tuple[int, int]]
    writable: list[tuple[int, int]]
    descriptors: list[int]                 # indices in the descriptor table
    indirect_table: tuple[int, int] | None = None   # (addr, length) in the arena
    allocations: list[tuple[int, int]] = field(default_factory=list)


class FakeDriver:
    """Guest side of a split virtqueue whose rings live at the given addresses."""

    def __init__(self, memory: GuestMemory, size: int, *, desc_addr: int, avail_addr: int,
                 used_addr: int, arena: tuple[int, int], event_idx: bool = False,
                 start_idx: int = 0, kick: Callable[["FakeDriver"], None] | None = None,
                 layout: str = "modern", align: int = 4096):
        """arena: (addr, length) of guest memory for data buffers and indirect tables.
        start_idx: initial avail->idx and used->idx (to exercise 16-bit wrap-around).
        kick: called with the driver whenever kick() decides the device must be notified."""
        if size < 1 or size & (size - 1):
            raise DriverError(f"queue size {size:#x} is not a power of two")
        self.memory, self.size, self.event_idx = memory, size, event_idx
        self.desc_addr, self.avail_addr, self.used_addr = desc_addr, avail_addr, used_addr
        self.layout, self.align = layout, align
        self.on_kick = kick
        self.kicks = 0
        self.arena = Arena(*arena)
        self._mask = size - 1
        self._free_desc = list(range(size - 1, -1, -1))   # pop() hands out 0, 1, 2, ...
        self._posted: dict[int, PostedChain] = {}          # in the avail ring or with the device
        self._idle: dict[int, PostedChain] = {}            # reaped with keep=True, ready to repost
        start_idx &= 0xFFFF
        self.avail_idx = start_idx       # shadow: next avail ring entry we will fill
        self._published = start_idx      # what avail->idx says
        self._kicked = start_idx         # avail->idx at the last kick decision
        self.last_used_idx = start_idx
        memory.fill(desc_addr, desc_table_size(size))
        memory.fill(avail_addr, avail_ring_size(size))
        memory.fill(used_addr, used_ring_size(size))
        memory.write_u16(avail_addr + 2, start_idx)
        memory.write_u16(used_addr + 2, start_idx)     # as a device that had been running would
        # used_event starts at start_idx: interrupt after the first used buffer (as Linux does).
        memory.write_u16(self._used_event_addr, start_idx)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def modern(cls, memory: GuestMemory, size: int, base_addr: int = 0, *,
               arena: tuple[int, int] | None = None, **kw) -> "FakeDriver":
        """Rings packed from base_addr with the spec's alignments (2.7); arena after them."""
        desc = _align(base_addr, DESC_ALIGN)
        avail = _align(desc + desc_table_size(size), AVAIL_ALIGN)
        used = _align(avail + avail_ring_size(size), USED_ALIGN)
        end = used + used_ring_size(size)
        return cls(memory, size, desc_addr=desc, avail_addr=avail, used_addr=used,
                   arena=arena or (end, memory.size - end), layout="modern", **kw)

    @classmethod
    def legacy(cls, memory: GuestMemory, size: int, base_addr: int = 0, align: int = 4096, *,
               arena: tuple[int, int] | None = None, **kw) -> "FakeDriver":
        """Rings in the legacy single-area layout (vring_init; lguest uses align 4096)."""
        desc, avail, used = legacy_layout(size, base_addr, align)
        end = base_addr + legacy_size(size, align)
        return cls(memory, size, desc_addr=desc, avail_addr=avail, used_addr=used,
                   arena=arena or (end, memory.size - end), layout="legacy", align=align, **kw)

    def device_queue(self, **kw) -> SplitVirtqueue:
        """The device-side engine over the same rings, its indices in step with ours."""
        if self.layout == "legacy":
            vq = SplitVirtqueue.legacy(self.memory, self.size, self.desc_addr, self.align,
                                       self.event_idx, **kw)
        else:
            vq = SplitVirtqueue(self.memory, self.size, self.desc_addr, self.avail_addr,
                                self.used_addr, self.event_idx, **kw)
        vq.set_indices(self._published, self.last_used_idx)
        return vq

    # -- posting ------------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        return len(self._free_desc)

    def add(self, readable: list, writable: list[int], indirect: bool = False) -> int:
        """Post a chain and return its head; publish() or kick() makes it visible.

        readable: bytes (copied into a new buffer) or ints (a buffer of that length whose
        contents are whatever the arena held).  writable: lengths of device-writable buffers.
        indirect: put the chain in an indirect table behind a single descriptor (2.7.5.3).
        """
        lengths = [r if isinstance(r, int) else len(r) for r in readable] + list(writable)
        count = len(lengths)
        if count == 0:
            raise DriverError("a chain needs at least one buffer")
        if len(self._free_desc) < (1 if indirect else count):
            raise QueueFull(f"{len(self._free_desc)} free descriptors, chain needs "
                            f"{1 if indirect else count}")
        allocations: list[tuple[int, int]] = []
        try:
            ranges = []
            for n in lengths:
                addr = self.arena.alloc(n)
                allocations.append((addr, n))
                ranges.append((addr, n))
            table = None
            if indirect:
                table = (self.arena.alloc(count * DESC_SIZE), count * DESC_SIZE)
                allocations.append(table)
        except QueueFull:
            for addr, n in allocations:
                self.arena.free(addr, n)
            raise
        for (addr, _), data in zip(ranges, readable):
            if not isinstance(data, int):
                self.memory.write(addr, data)
        n_read = len(readable)
        flags = [_WRITE if k >= n_read else 0 for k in range(count)]
        if indirect:
            for k, (addr, n) in enumerate(ranges):
                more = k + 1 < count
                self.memory.pack(DESC, table[0] + k * DESC_SIZE, addr, n,
                                 flags[k] | (_NEXT if more else 0), k + 1 if more else 0)
            descs = [self._free_desc.pop()]
            self.write_desc(descs[0], table[0], table[1], _INDIRECT)
        else:
            descs = [self._free_desc.pop() for _ in range(count)]
            for k, (addr, n) in enumerate(ranges):
                more = k + 1 < count
                self.write_desc(descs[k], addr, n, flags[k] | (_NEXT if more else 0),
                                descs[k + 1] if more else 0)
        head = descs[0]
        self._posted[head] = PostedChain(head, ranges[:n_read], ranges[n_read:], descs, table,
                                         allocations)
        self._offer(head)
        return head

    def _offer(self, head: int) -> None:
        self.write_avail_entry(self.avail_idx & self._mask, head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF

    def repost(self, head: int) -> None:
        """Offer again a chain reaped with keep=True, without rebuilding it."""
        try:
            posted = self._idle.pop(head)
        except KeyError:
            raise DriverError(f"head {head:#x} was not reaped with keep=True") from None
        self._posted[head] = posted
        self._offer(head)

    def posted(self, head: int) -> PostedChain:
        """What the driver put behind head (while it is posted)."""
        return self._posted[head]

    def publish(self) -> None:
        """Make every added chain visible: avail->idx is written after the ring entries (2.7.13)."""
        self.memory.write_u16(self.avail_addr + 2, self.avail_idx)
        self._published = self.avail_idx

    def should_kick(self) -> bool:
        """virtqueue_kick_prepare: must the device hear about what was published since the
        last decision?  avail_event under EVENT_IDX, else VIRTQ_USED_F_NO_NOTIFY (2.7.10)."""
        old, new = self._kicked, self._published
        self._kicked = new
        if old == new:
            return False
        if self.event_idx:
            return vring_need_event(self.avail_event, new, old)
        return not self.used_flags & VIRTQ_USED_F_NO_NOTIFY

    def kick(self) -> bool:
        """Publish, then notify the device (through the kick hook) if it wants to hear."""
        self.publish()
        if not self.should_kick():
            return False
        self.kicks += 1
        if self.on_kick is not None:
            self.on_kick(self)
        return True

    # -- reaping ------------------------------------------------------------------------------
    @property
    def used_idx(self) -> int:
        return self.memory.read_u16(self.used_addr + 2)

    def reap(self, keep: bool = False) -> list[tuple[int, int, bytes]]:
        """Collect used buffers: (head, len, the first len bytes of its writable buffers).

        The chain's descriptors and buffers are freed, unless keep=True, which keeps the
        chain built for repost().  Raises DriverError when the device returns a head that
        is not outstanding or claims more bytes than the chain can hold.
        """
        used_idx = self.used_idx
        pending = (used_idx - self.last_used_idx) & 0xFFFF
        if pending > self.size:
            raise DriverError(f"used->idx moved from {self.last_used_idx:#x} to {used_idx:#x}, "
                              f"more than the queue size {self.size:#x}")
        out = []
        for _ in range(pending):
            slot = self.used_addr + 4 + USED_ELEM.size * (self.last_used_idx & self._mask)
            head, length = self.memory.unpack(USED_ELEM, slot)
            posted = self._posted.pop(head, None)
            if posted is None:
                raise DriverError(f"device returned head {head:#x}, which is not outstanding")
            out.append((head, length, self._gather(posted, length)))
            if keep:
                self._idle[head] = posted
            else:
                self._release(posted)
            self.last_used_idx = (self.last_used_idx + 1) & 0xFFFF
        return out

    def _gather(self, posted: PostedChain, length: int) -> bytes:
        capacity = sum(n for _, n in posted.writable)
        if length > capacity:
            raise DriverError(f"device says it wrote {length:#x} bytes to head {posted.head:#x}, "
                              f"whose writable buffers hold {capacity:#x}")
        parts = []
        for addr, n in posted.writable:
            if length <= 0:
                break
            take = min(n, length)
            parts.append(self.memory.read(addr, take))
            length -= take
        return b"".join(parts)

    def _release(self, posted: PostedChain) -> None:
        for addr, n in posted.allocations:
            self.arena.free(addr, n)
        self._free_desc.extend(reversed(posted.descriptors))

    # -- interrupt suppression (driver side, 2.7.7) ---------------------------------------------
    def set_no_interrupt(self, on: bool) -> None:
        """Set or clear VIRTQ_AVAIL_F_NO_INTERRUPT (ignored by the device under EVENT_IDX)."""
        flags = self.memory.read_u16(self.avail_addr)
        value = int(VIRTQ_AVAIL_F_NO_INTERRUPT)
        self.memory.write_u16(self.avail_addr, (flags | value) if on else (flags & ~value))

    def disable_interrupts(self) -> None:
        """virtqueue_disable_cb: no used-buffer notifications while we reap.

        With EVENT_IDX, used_event goes to the index before last_used_idx, one the device
        has already passed (Linux writes 0, which is the same thing once the index moved).
        """
        if self.event_idx:
            self.set_used_event(self.last_used_idx - 1)
        else:
            self.set_no_interrupt(True)

    def enable_interrupts(self) -> bool:
        """virtqueue_enable_cb: ask for the next used-buffer notification, then look again.

        Returns False when used buffers are already waiting (reap them instead of sleeping:
        their interrupt may have been decided against the old used_event/flags), True when
        the ring is empty and the next used buffer will interrupt (2.7.7.2).  The store
        and the load are in this order, with the mb Linux has between them, by construction
        (one thread, Python statements in sequence).
        """
        if self.event_idx:
            self.set_used_event(self.last_used_idx)
        else:
            self.set_no_interrupt(False)
        return self.used_idx == self.last_used_idx

    def set_used_event(self, idx: int) -> None:
        """Ask for an interrupt once the device's used->idx moves past idx (EVENT_IDX)."""
        self.memory.write_u16(self._used_event_addr, idx & 0xFFFF)

    @property
    def _used_event_addr(self) -> int:
        return self.avail_addr + 4 + 2 * self.size

    @property
    def used_event(self) -> int:
        return self.memory.read_u16(self._used_event_addr)

    @property
    def avail_event(self) -> int:
        """The device's avail_event (EVENT_IDX): kick once avail->idx moves past it."""
        return self.memory.read_u16(self.used_addr + 4 + USED_ELEM.size * self.size)

    @property
    def used_flags(self) -> int:
        return self.memory.read_u16(self.used_addr)

    # -- hostile guest ------------------------------------------------------------------------
    def write_desc(self, index: int, addr: int, length: int, flags: int, next_index: int = 0) -> None:
        """Write descriptor `index` of the table, whatever its values."""
        self.memory.pack(DESC, self.desc_addr + index * DESC_SIZE, addr, length, flags, next_index)

    def write_avail_entry(self, pos: int, head: int) -> None:
        """Write avail->ring[pos], whatever head says (pos is the slot, 0..size-1)."""
        self.memory.write_u16(self.avail_addr + 4 + 2 * pos, head)

    def write_avail_idx(self, idx: int) -> None:
        """Write avail->idx directly, bypassing the shadow index."""
        self.memory.write_u16(self.avail_addr + 2, idx & 0xFFFF)
        self._published = idx & 0xFFFF

    def write_raw(self, addr: int, data: bytes) -> None:
        """Write any bytes at any guest-physical address (rings, tables, buffers)."""
        self.memory.write(addr, data)

    @property
    def desc_table(self) -> tuple[int, int]:
        return self.desc_addr, desc_table_size(self.size)

    @property
    def avail_ring(self) -> tuple[int, int]:
        return self.avail_addr, avail_ring_size(self.size)

    @property
    def used_ring(self) -> tuple[int, int]:
        return self.used_addr, used_ring_size(self.size)


def _align(value: int, align: int) -> int:
    return (value + align - 1) & ~(align - 1)


class TransportDriver:
    """What Linux's virtio core does over any transport (virtio_dev_probe): probe, negotiate,
    set up the queues, DRIVER_OK.  A transport's fake driver supplies the steps."""

    def driver_ok(self) -> None:
        self.add_status(DeviceStatus.DRIVER_OK)

    def init(self, queues: int, wanted: int | None = None) -> list[FakeDriver]:
        """The whole handshake with `queues` queues set up; returns their rings."""
        self.probe()
        self.negotiate(wanted)
        rings = [self.setup_queue(i) for i in range(queues)]
        self.driver_ok()
        return rings
