"""Transports: how a guest finds devices and talks to them (lguest bus page, virtio-mmio)."""
