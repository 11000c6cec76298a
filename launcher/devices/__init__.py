"""Transport-independent virtio devices: the device model and the four devices of the original
Launcher (console, block, net, rng).  Devices are state machines with no threads or fds of their
own; launcher.io runs their queues (QueueWorkers) and owns the host backends with fds.

A transport drives a device through:

    dev.offered / dev.accept_features(bits) / dev.has_feature(bit)      2.2
    dev.read_config(off, n) / dev.write_config(off, data)               2.5 (hook: config_write)
    dev.set_status(value) -> bool      (STATUS_TRANSITIONS; legacy=True adds 7.1's path)
    dev.set_queue(i, size, desc, avail, used) / dev.set_queue_legacy(i, size, base, align)
    dev.trigger = <Trigger: trigger(queue_index)>; dev.runner = QueueWorkers(dev)
    dev.activate(memory)   (DRIVER_OK does it; lguest also on an early kick)
    dev.process(i) -> interrupt due?   (threadless; QueueWorkers calls it per queue)
    dev.close()            (threads joined, eventfds and backend closed)

Guest mistakes become GuestFault subclasses: counted in dev.metrics and logged, or raised
when strict=True.
"""
