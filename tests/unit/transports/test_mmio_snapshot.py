"""virtio-mmio snapshots: a register file and its device saved mid-stream and loaded into new
objects carry on as if nothing happened (indices, features, status, interrupts, held chains)."""
import json

import pytest

from harness.fakes.backends import MemoryConsole, SeededEntropy
from harness.fakes.mmio_driver import MmioDriver
from launcher.devices.base import DeviceStatus
from launcher.devices.console import ConsoleDevice
from launcher.devices.rng import RngDevice
from launcher.devices.snapshot import DeviceStateMismatch, load_device, save_device, stop_runner
from launcher.memory import GuestMemory
from launcher.transports.mmio import InterruptStatus, MmioReg, MmioTransport
from launcher.transports.mmio_snapshot import (
    TransportStateMismatch, load_transport, save_transport,
)

OK = DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK | DeviceStatus.DRIVER_OK


@pytest.fixture
def memory():
    mem = GuestMemory(1 << 20)
    yield mem
    mem.close()


def save(transport) -> dict:
    """What the bus writes: plain JSON, through a real encode/decode."""
    stop_runner(transport.device)
    return json.loads(json.dumps({"transport": save_transport(transport), "device": save_device(transport.device)}))


def restore(device, memory, state) -> MmioTransport:
    transport = MmioTransport(device, memory, strict=True)
    load_transport(transport, state["transport"])
    load_device(device, state["device"], memory)
    return transport


def retarget(driver: MmioDriver, transport) -> MmioDriver:
    """The guest's driver, unchanged, now talking to the restored register file."""
    driver.bus = transport
    return driver


def test_rng_carries_on_from_the_saved_indices(memory):
    old = MmioTransport(RngDevice(SeededEntropy(1)), memory, strict=True)
    driver = MmioDriver(old, memory)
    ring, = driver.init(1)
    for _ in range(3):
        ring.add([], [16])
    ring.kick()
    assert [length for _, length, _ in ring.reap()] == [16, 16, 16]
    state = save(old)
    assert state["device"]["queues"][0]["last_avail_idx"] == 3 and state["device"]["queues"][0]["used_idx"] == 3
    old.device.close()

    new = restore(RngDevice(SeededEntropy(2)), memory, state)
    retarget(driver, new)
    assert driver.status() == OK and new.device.active
    new.write(MmioReg.QUEUE_SEL, 4, 0)
    assert new.read(MmioReg.QUEUE_READY, 4) == 1
    assert new.device.accepted == old.device.accepted
    ring.add([], [8])
    ring.add([], [8])
    ring.kick()
    got = ring.reap()
    assert [length for _, length, _ in got] == [8, 8]
    assert got[0][2] == SeededEntropy.stream(2, 8)      # served by the restored device's backend
    assert new.device.queues[0].vq.used_idx == 5
    new.device.close()


def test_registers_and_pending_interrupt_survive(memory):
    old = MmioTransport(RngDevice(SeededEntropy(1)), memory, strict=True, interrupt=lambda: None)
    driver = MmioDriver(old, memory)
    ring, = driver.init(1)
    ring.add([], [4])
    ring.kick()
    assert old.interrupt_status == InterruptStatus.USED_BUFFER
    old.write(MmioReg.QUEUE_SEL, 4, 0)
    old.write(MmioReg.DEVICE_FEATURES_SEL, 4, 1)
    state = save(old)
    old.device.close()
    new = restore(RngDevice(SeededEntropy(1)), memory, state)
    for name in ("queue_sel", "device_features_sel", "driver_features", "interrupt_status", "config_generation"):
        assert getattr(new, name) == getattr(old, name), name
    assert [vars(q) for q in new.queues] == [vars(q) for q in old.queues]
    assert retarget(driver, new).interrupt() == InterruptStatus.USED_BUFFER   # the driver can still ack it
    assert new.interrupt_status == 0
    new.device.close()


def test_a_held_receive_chain_is_offered_again(memory):
    console = MemoryConsole()
    old = MmioTransport(ConsoleDevice(console), memory, strict=True)
    driver = MmioDriver(old, memory)
    rx, tx = driver.init(2)
    rx.add([], [64])
    rx.kick()                                   # no input yet: the device holds the chain
    assert old.device.queues[0].held is not None
    state = save(old)
    assert state["device"]["queues"][0]["last_avail_idx"] == 0
    old.device.close()

    console2 = MemoryConsole()
    new = restore(ConsoleDevice(console2), memory, state)
    console2.feed(b"typed after the restore")
    assert new.device.process(0)
    (_, length, data), = rx.reap()
    assert data == b"typed after the restore" and length == len(data)
    new.device.close()


def test_state_for_another_device_is_refused(memory):
    old = MmioTransport(RngDevice(SeededEntropy(1)), memory, strict=True)
    MmioDriver(old, memory).init(1)
    state = save(old)
    old.device.close()
    console = ConsoleDevice(MemoryConsole())
    with pytest.raises(DeviceStateMismatch, match="RngDevice cannot go into a ConsoleDevice"):
        load_device(console, state["device"], memory)
    with pytest.raises(TransportStateMismatch, match="saved 1 queues"):
        load_transport(MmioTransport(console, memory), state["transport"])
    console.close()


def test_an_unconfigured_device_restores_unconfigured(memory):
    old = MmioTransport(RngDevice(SeededEntropy(1)), memory, strict=True)
    state = save(old)
    new = restore(RngDevice(SeededEntropy(1)), memory, state)
    assert new.device.status == 0 and not new.device.active
    assert MmioDriver(new, memory).init(1)      # a driver can still probe it from scratch
    new.device.close()
