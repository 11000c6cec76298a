"""The rings' 16-bit indices are read and written by the driver on another CPU while the device
works: every access must be a single 16-bit load or store (launcher.virtqueue).

Before the fix, used->idx (and avail_event, and the used flags) were published with
struct.pack_into, which zeroes its destination before it packs: for an instant the driver read
used->idx 0.  On ordinary KVM the guest then took a stale used element ("output:id 0 is not a
head!"), broke the console's transmit queue and spun in put_chars with interrupts off: the
command channel's lost-output stall.  Here a second process plays the driver's CPU on the same
shared mapping (GuestMemory is MAP_SHARED), and each side flips an index 100,000 times between
two values that share no byte: any other value seen is a torn access.  (The load side guards the
reads the same way; struct.unpack_from happened to load whole u16s already.)
"""
import os
import time

from launcher.errors import VirtqueueError
from launcher.memory import GuestMemory
from launcher.virtqueue import SplitVirtqueue

SIZE = 16
DESC, AVAIL, USED, STOP = 0x1000, 0x2000, 0x3000, 0x4000
BEFORE, AFTER = 0x00FF, 0x0100           # every byte differs: any mix of the two is torn
FLIPS = 100_000
TORN = 3                                 # the other process's exit status when it saw a torn value


def _other_cpu(memory: GuestMemory, work) -> int:
    """Run work(u16 view of the used ring, of the avail ring, stop flag view) in a child process
    sharing memory until STOP is set; returns its exit status."""
    pid = os.fork()
    if pid == 0:
        status = 0
        try:
            status = work(memory.view(USED, 4).cast("H"), memory.view(AVAIL, 4).cast("H"), memory.view(STOP, 1))
        finally:
            os._exit(status)
    return pid


def _stop(memory: GuestMemory, pid: int) -> int:
    memory.write(STOP, b"\1")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, 9)
    raise AssertionError("the other CPU did not stop")


def _driver_reading_used_idx(used16, avail16, stop) -> int:
    while not stop[0]:
        if used16[1] not in (BEFORE, AFTER):
            return TORN
    return 0


def _driver_publishing_avail_idx(used16, avail16, stop) -> int:
    while not stop[0]:
        avail16[1] = BEFORE
        avail16[1] = AFTER
    return 0


def test_used_idx_is_published_in_one_store():
    with GuestMemory(1 << 20) as memory:
        vq = SplitVirtqueue(memory, SIZE, DESC, AVAIL, USED)
        vq.set_indices(0, BEFORE)
        pid = _other_cpu(memory, _driver_reading_used_idx)
        for i in range(FLIPS):
            vq.set_indices(0, AFTER if i & 1 else BEFORE)
        assert _stop(memory, pid) == 0, "the driver saw a torn used->idx"
        vq.close()


def test_avail_idx_is_read_in_one_load():
    with GuestMemory(1 << 20) as memory:
        vq = SplitVirtqueue(memory, SIZE, DESC, AVAIL, USED)
        memory.write_u16(AVAIL + 2, BEFORE)
        vq.last_avail_idx = BEFORE       # 0x00ff: nothing pending; 0x0100: one entry
        pid = _other_cpu(memory, _driver_publishing_avail_idx)
        torn = None
        try:
            for _ in range(FLIPS):
                vq.has_available()       # a torn 0x0000 or 0x01ff is an index jump past SIZE
        except VirtqueueError as err:
            torn = err
        assert _stop(memory, pid) == 0
        assert torn is None, f"a torn avail->idx: {torn}"
        vq.close()
