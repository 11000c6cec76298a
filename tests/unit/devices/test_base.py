"""The device model: status life cycle (2.1, 3.1.1), features (2.2), config space (2.5),
queue faults, and clean stopping of service threads and fds."""
import itertools
import os
import threading

import pytest

from harness.fakes.backends import SeededEntropy
from harness.fakes.backends_bench import DeviceBench
from launcher.devices.base import (
    LEGACY_STATUS_TRANSITIONS, STATUS_TRANSITIONS, ConfigAccessOutOfRange, DeviceStatus,
    FeaturesNotOffered, GuestFault, QueueRingBroken, StatusTransitionRefused, VirtioDevice,
    split_views,
)
from launcher.devices.rng import RngDevice
from launcher.memory import GuestMemory

A, D, FO, OK, F = (DeviceStatus.ACKNOWLEDGE, DeviceStatus.DRIVER, DeviceStatus.FEATURES_OK,
                   DeviceStatus.DRIVER_OK, DeviceStatus.FAILED)
NEEDS_RESET = DeviceStatus.DEVICE_NEEDS_RESET
ALL_STATUS = [sum(bits) for r in range(6) for bits in itertools.combinations((A, D, FO, OK, F), r)]


class Plain(VirtioDevice):
    """A device with no queues, to exercise the model alone."""
    name = "plain"
    device_id = 99


MODERN_SEQUENCE = [A, D, FO, OK]      # 3.1.1 steps 1, 2, 5 and 8
LEGACY_SEQUENCE = [A, D, OK]          # 7.1: a legacy driver never writes FEATURES_OK


def sequences(legacy):
    # A device that takes legacy drivers (transitional, 7.1) still takes modern ones.
    return [MODERN_SEQUENCE, LEGACY_SEQUENCE] if legacy else [MODERN_SEQUENCE]


def _prefixes(seq):
    states, acc = [0], 0
    for bit in seq:
        acc |= bit
        states.append(acc)
    return states


def spec_reachable(legacy):
    states = sorted({s for seq in sequences(legacy) for s in _prefixes(seq)})
    return states + [s | F for s in states]


def _next_in(seq, old, new):
    done = [bit for bit in seq if old & bit]
    if old != sum(done) or len(done) == len(seq):
        return False
    return new == old | seq[len(done)] and old in _prefixes(seq)


def spec_allows(old, new, legacy):
    """The status rules restated from the spec, independently of the device's table."""
    if new == 0 or new == old:
        return True
    if old & F:
        return False                  # only a reset leaves FAILED
    if new == old | F:
        return True
    return any(_next_in(seq, old, new) for seq in sequences(legacy))


def drive_to(dev, target, legacy):
    seq = LEGACY_SEQUENCE if legacy and not target & FO else MODERN_SEQUENCE
    for step in _prefixes(seq)[1:]:
        if step & target == step:
            assert dev.set_status(step)
    if target & F:
        assert dev.set_status(target)
    assert dev.status == target


@pytest.mark.parametrize("legacy", [False, True], ids=["modern", "legacy"])
def test_table_keys_are_the_reachable_statuses(legacy):
    table = LEGACY_STATUS_TRANSITIONS if legacy else STATUS_TRANSITIONS
    reachable = set(spec_reachable(legacy))
    assert reachable <= set(table)
    if not legacy:
        assert set(table) == reachable


@pytest.mark.parametrize("legacy", [False, True], ids=["modern", "legacy"])
def test_every_status_pair(legacy):
    """Each reachable status x each of the 32 driver-writable values: taken or refused."""
    memory = GuestMemory(4096)
    for old, new in itertools.product(spec_reachable(legacy), ALL_STATUS):
        dev = Plain(legacy=legacy, strict=False)
        dev.memory = memory
        drive_to(dev, old, legacy)
        refused = dev.metrics.status_refused
        took = dev.set_status(new)
        want = spec_allows(old, new, legacy)
        assert took == want, f"{old:#04x} -> {new:#04x}"
        assert dev.status == (new if want else old), f"{old:#04x} -> {new:#04x}"
        assert dev.metrics.status_refused == refused + (not want)
        assert dev.active == bool(dev.status & OK and not dev.status & F)
    memory.close()


def test_refused_transition_raises_in_strict_mode():
    dev = Plain(strict=True)
    with pytest.raises(StatusTransitionRefused, match=r"0x00 -> 0x04"):
        dev.set_status(OK)
    assert dev.status == 0


def test_needs_reset_bit_is_device_owned():
    dev = Plain()
    dev.set_status(A)
    dev.status |= NEEDS_RESET
    # A driver that reads the status and ORs in the next bit writes NEEDS_RESET back.
    assert dev.set_status(A | D | NEEDS_RESET)
    assert dev.status == A | D | NEEDS_RESET
    dev.set_status(0)
    assert dev.status == 0


def test_features_ok_refused_for_features_never_offered():
    dev = Plain(offered=0b101, strict=False)
    dev.set_status(A)
    dev.set_status(A | D)
    assert not dev.accept_features(0b111)
    assert dev.accepted == 0 and dev.metrics.guest_faults == 1
    assert dev.accept_features(0b100)
    dev.accepted = 0b110          # as if a transport stored the driver's bits unchecked
    assert not dev.set_status(A | D | FO)
    assert dev.status == A | D


def test_accept_unoffered_raises_in_strict_mode():
    with pytest.raises(FeaturesNotOffered, match="extra 0x2"):
        Plain(offered=1, strict=True).accept_features(3)


def test_reset_clears_accepted_features():
    dev = Plain(offered=0xF)
    dev.memory = GuestMemory(4096)
    dev.set_status(A)
    dev.set_status(A | D)
    dev.accept_features(0x5)
    dev.set_status(0)
    assert (dev.accepted, dev.status, dev.metrics.resets) == (0, 0, 1)
    dev.memory.close()


def test_config_reads_and_out_of_range_access():
    dev = Plain(config=b"\x01\x02\x03\x04", strict=False)
    assert dev.read_config(1, 2) == b"\x02\x03"
    assert dev.read_config(3, 4) == bytes(4)
    dev.write_config(4, b"x")
    dev.write_config(-1, b"x")
    assert dev.metrics.guest_faults == 3
    assert bytes(dev.config) == b"\x01\x02\x03\x04"
    with pytest.raises(ConfigAccessOutOfRange, match=r"0x2\+0x4 .* 0x4-byte"):
        Plain(config=b"abcd", strict=True).write_config(2, b"wxyz")


def test_config_write_hook_receives_in_range_writes():
    seen = []

    class Writable(Plain):
        def config_write(self, offset, data):
            seen.append((offset, data))

    Writable(config=bytes(8)).write_config(2, b"hi")
    assert seen == [(2, b"hi")]


def test_split_views():
    a, b = memoryview(bytearray(b"abcd")), memoryview(bytearray(b"efgh"))
    head, tail = split_views([a, b], 6)
    assert [bytes(v) for v in head] == [b"abcd", b"ef"]
    assert [bytes(v) for v in tail] == [b"gh"]
    assert split_views([a], 0) == ([], [a])


# -- queue faults -----------------------------------------------------------------------------

def rng_bench(strict=False, threads=False):
    bench = DeviceBench(RngDevice(SeededEntropy(1), strict=strict), threads=threads)
    bench.negotiate()
    return bench


def test_broken_chain_gets_zero_length_used_entry_and_queue_goes_on():
    with rng_bench() as bench:
        drv = bench.driver(0)
        head = drv.add([], [16])
        drv.write_desc(head, 0, 16, 2 | 1, head)        # WRITE|NEXT onto itself: a loop
        good = drv.add([], [8])
        drv.kick()
        bench.process(0)
        assert drv.reap() == [(head, 0, b""), (good, 8, SeededEntropy.stream(1, 8))]
        assert bench.device.metrics.guest_faults == 1


def test_broken_chain_raises_in_strict_mode():
    with rng_bench(strict=True) as bench:
        drv = bench.driver(0)
        head = drv.add([], [16])
        drv.write_desc(head, bench.memory.size, 16, 2)   # buffer outside guest memory
        drv.kick()
        with pytest.raises(GuestFault, match="outside guest memory"):
            bench.process(0)
        assert drv.reap() == [(head, 0, b"")]


def test_broken_ring_stops_queue_until_reset():
    with rng_bench() as bench:
        drv = bench.driver(0)
        drv.write_avail_idx(drv.size + 5)                # more entries than the ring holds
        assert bench.process(0) is False
        assert bench.device.status & NEEDS_RESET
        assert bench.device.metrics.guest_faults == 1
        assert bench.process(0) is False                 # stopped: no second fault
        assert bench.device.metrics.guest_faults == 1
        bench.device.set_status(0)
        bench.reset_rings()
        bench.negotiate()
        drv = bench.driver(0)
        drv.add([], [4])
        drv.kick()
        bench.process(0)
        assert len(drv.reap()) == 1


def test_broken_ring_raises_in_strict_mode():
    with rng_bench(strict=True) as bench:
        bench.driver(0).write_avail_idx(1000)
        with pytest.raises(QueueRingBroken, match="0x3e8 entries"):
            bench.process(0)


def test_rings_outside_memory_at_activation_need_reset():
    dev = RngDevice(SeededEntropy(), strict=False)
    dev.memory = GuestMemory(4096)
    dev.set_queue(0, 256, 0, 4096, 8192)                 # past the end of a one-page RAM
    for status in (A, A | D, A | D | FO, A | D | FO | OK):
        dev.set_status(status)
    assert not dev.active and dev.status & NEEDS_RESET
    assert dev.metrics.guest_faults == 1
    dev.close()
    dev.memory.close()


# -- threads and fds --------------------------------------------------------------------------

def device_threads(name) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"{name}-")]


def test_reset_mid_traffic_leaves_no_threads_and_close_leaves_no_fds(monkeypatch):
    closed = []
    real_close = os.close

    def spy_close(fd):
        closed.append(fd)
        real_close(fd)

    bench = rng_bench(threads=True)
    ours = bench.workers.fds()
    assert len(ours) == 2                # the queue's kick eventfd and the stop eventfd
    monkeypatch.setattr(os, "close", spy_close)
    drv = bench.driver(0)
    for _ in range(20):
        drv.add([], [64])
    drv.kick()
    assert len(device_threads("rng")) == 1
    bench.device.set_status(0)            # maybe mid-request: the thread is joined
    assert device_threads("rng") == []
    assert bench.workers.threads == []
    # A new life after the reset works and is stopped again by close().
    bench.reset_rings()
    bench.negotiate()
    bench.driver(0).add([], [32])
    bench.driver(0).kick()
    assert bench.wait_used(0, 1)[0][1] == 32
    bench.close()
    assert device_threads("rng") == []
    assert bench.workers.errors == []
    monkeypatch.undo()
    assert bench.workers.fds() == []
    assert set(ours) <= set(closed)


def test_failed_stops_threads():
    with rng_bench(threads=True) as bench:
        assert len(device_threads("rng")) == 1
        assert bench.device.set_status(bench.device.status | F)
        assert device_threads("rng") == []
        assert not bench.device.active


def test_threaded_interrupts_reach_trigger():
    with rng_bench(threads=True) as bench:
        drv = bench.driver(0)
        drv.add([], [10])
        drv.kick()
        bench.trigger.wait_for(0)
        assert drv.reap()[0][1] == 10
