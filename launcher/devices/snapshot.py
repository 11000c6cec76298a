"""A virtio device's state as plain data, for snapshots: what the driver negotiated, config
space, and where each queue stands.  Reads and writes the device's attributes from outside,
so the device models themselves carry no snapshot code.

    state = save_device(device)          # the device is quiescent: runner stopped (stop_runner)
    ...
    load_device(device, state, memory)   # a new device of the same kind, same host backing
    start_runner(device)                 # service threads, once the whole guest is restored

A queue's engine state is its two indices and whether the driver is asked to kick:
last_avail_idx (rewound by one when a chain was held for host input, so that chain is
popped again: the driver has not got it back and its ring entry is unchanged) and used_idx.
A chain a service thread is serving cannot be captured, so save only after stop_runner().
"""
from __future__ import annotations

from launcher.devices.base import VirtioDevice
from launcher.errors import DeviceError


class DeviceStateMismatch(DeviceError):
    """Saved device state does not fit the device it is loaded into."""


def stop_runner(device: VirtioDevice) -> None:
    """Join the device's service threads: each finishes the chain it is serving first."""
    if device.runner is not None:
        device.runner.stop()


def start_runner(device: VirtioDevice) -> None:
    if device.active and device.runner is not None:
        device.runner.start()


def save_queue(slot) -> dict:
    state = {"name": slot.name, "max_size": slot.max_size, "size": slot.size, "desc": slot.desc_addr,
             "avail": slot.avail_addr, "used": slot.used_addr, "broken": slot.broken, "live": slot.vq is not None}
    if slot.vq is not None:
        vq = slot.vq
        state.update(last_avail_idx=(vq.last_avail_idx - (1 if slot.held is not None else 0)) & 0xFFFF,
                     used_idx=vq.used_idx, event_idx=vq.event_idx,
                     notifications_suppressed=vq.notifications_suppressed)
    return state


def save_device(device: VirtioDevice) -> dict:
    state = {"kind": type(device).__name__, "device_id": int(device.device_id), "status": device.status,
             "offered": device.offered, "accepted": device.accepted, "legacy": device.legacy,
             "active": device.active, "config": bytes(device.config).hex(),
             "queues": [save_queue(slot) for slot in device.queues]}
    if hasattr(device, "input_closed"):          # the console: its host input already ended
        state["input_closed"] = device.input_closed
    return state


def load_device(device: VirtioDevice, state: dict, memory) -> None:
    """Give a fresh, inactive device the saved state; its engines are rebuilt over `memory`
    at the saved indices, without starting its service threads (start_runner does)."""
    if state["kind"] != type(device).__name__ or state["device_id"] != int(device.device_id):
        raise DeviceStateMismatch(f"saved state of a {state['kind']} cannot go into a {type(device).__name__}")
    if len(state["queues"]) != len(device.queues):
        raise DeviceStateMismatch(f"{device.name}: saved {len(state['queues'])} queues, the device has "
                                  f"{len(device.queues)}")
    config = bytes.fromhex(state["config"])
    if len(config) != len(device.config):
        raise DeviceStateMismatch(f"{device.name}: saved config space is {len(config)} bytes, the device's "
                                  f"{len(device.config)}")
    if config != bytes(device.config) and type(device).__name__ == "BlockDevice":
        raise DeviceStateMismatch(f"{device.name}: the disk's capacity or limits differ from the snapshot's "
                                  f"(the guest knows the old ones): use a disk of the same size")
    if state["offered"] & ~device.offered:
        raise DeviceStateMismatch(f"{device.name}: the guest accepted features {state['offered']:#x} this "
                                  f"device does not offer ({device.offered:#x})")
    device.config[:] = config
    device.offered, device.accepted = state["offered"], state["accepted"]
    device.legacy, device.status = state["legacy"], state["status"]
    device.memory = memory
    for slot, saved in zip(device.queues, state["queues"]):
        if saved["max_size"] != slot.max_size:
            raise DeviceStateMismatch(f"{device.name}: {slot.name} holds {slot.max_size} entries, "
                                      f"the snapshot's {saved['max_size']}")
        slot.size, slot.desc_addr, slot.avail_addr, slot.used_addr = (
            saved["size"], saved["desc"], saved["avail"], saved["used"])
    if state.get("input_closed"):
        device.input_closed = True
    if not state["active"]:
        return
    runner, device.runner = device.runner, None     # build the engines, start nothing yet
    try:
        device.activate()
    finally:
        device.runner = runner
    if not device.active:
        raise DeviceStateMismatch(f"{device.name}: its queues could not be rebuilt from the snapshot")
    for slot, saved in zip(device.queues, state["queues"]):
        if slot.vq is None:
            continue
        slot.vq.set_indices(saved["last_avail_idx"], saved["used_idx"])
        slot.vq.suppress_notifications(saved["notifications_suppressed"])
        slot.broken = saved["broken"]
