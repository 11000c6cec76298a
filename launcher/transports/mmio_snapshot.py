"""A virtio-mmio register file's state as plain data, for snapshots.

Reads and writes MmioTransport's attributes from outside (the transport carries no snapshot
code): the feature and queue selectors, the driver's features word, each queue's registers,
InterruptStatus and ConfigGeneration.  The device behind it is saved by
launcher.devices.snapshot.
"""
from __future__ import annotations

from launcher.errors import TransportError

REGISTERS = ("device_features_sel", "driver_features_sel", "driver_features", "queue_sel",
             "interrupt_status", "config_generation")
QUEUE_REGISTERS = ("num_max", "num", "desc", "driver", "device", "ready")


class TransportStateMismatch(TransportError):
    """Saved transport state does not fit the transport it is loaded into."""


def save_transport(transport) -> dict:
    state = {name: int(getattr(transport, name)) for name in REGISTERS}
    state["features_ok_unconfirmed"] = transport._features_ok_unconfirmed
    state["queues"] = [{name: int(getattr(q, name)) for name in QUEUE_REGISTERS} for q in transport.queues]
    return state


def load_transport(transport, state: dict) -> None:
    if len(state["queues"]) != len(transport.queues):
        raise TransportStateMismatch(f"virtio-mmio {transport.name}: saved {len(state['queues'])} queues, "
                                     f"the device has {len(transport.queues)}")
    for queue, saved in zip(transport.queues, state["queues"]):
        if saved["num_max"] != queue.num_max:
            raise TransportStateMismatch(f"virtio-mmio {transport.name}: QueueNumMax {queue.num_max}, "
                                         f"the snapshot's {saved['num_max']}")
        queue.num, queue.desc, queue.driver, queue.device = (saved["num"], saved["desc"], saved["driver"],
                                                             saved["device"])
        queue.ready = bool(saved["ready"])
    for name in REGISTERS:
        setattr(transport, name, int(state[name]))
    transport._features_ok_unconfirmed = bool(state["features_ok_unconfirmed"])
