"""One exception tree for the launcher; each leaf names the rule it enforces."""


class LauncherError(Exception):
    """Base of every error the launcher raises on purpose."""


class GuestMemoryError(LauncherError):
    """Guest memory could not be set up or an access broke its bounds."""


class OutsideGuestMemory(GuestMemoryError):
    """A range leaves guest memory or wraps around the address space."""

    def __init__(self, addr: int, length: int, size: int):
        self.addr, self.length, self.size = addr, length, size
        super().__init__(
            f"range {addr:#x}+{length:#x} is outside guest memory (0..{size:#x})"
        )


class VirtqueueError(LauncherError):
    """The guest broke a split-virtqueue rule (virtio 1.x, 2.7)."""


class DeviceError(LauncherError):
    """A device request broke the device's rules."""


class TransportError(LauncherError):
    """A transport register or page access broke the transport's rules."""


class LoaderError(LauncherError):
    """The kernel or initrd could not be loaded."""


class HypervisorError(LauncherError):
    """The hypervisor backend failed or the guest died."""
