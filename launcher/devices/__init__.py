"""Transport-independent virtio devices: the device model and the four devices of the original
Launcher (console, block, net, rng).  Devices are state machines with no threads or fds of their
own; launcher.io runs their queues and owns the host backends with fds."""
