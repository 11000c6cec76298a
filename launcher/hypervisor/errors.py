"""Hypervisor errors: each leaf names what the backend needed and did not get."""
from launcher.errors import HypervisorError


class BackendUnavailable(HypervisorError):
    """The backend's device (/dev/kvm, /dev/lguest) cannot be opened."""


class UnknownBackend(HypervisorError):
    """No backend is registered under that name."""


class CapabilityMissing(HypervisorError):
    """The host's KVM lacks a capability the backend needs."""


class IoctlFailed(HypervisorError):
    """A KVM ioctl failed; the message names the ioctl and the errno."""


class BusConflict(HypervisorError):
    """Two devices claim overlapping port or MMIO ranges."""


class TransportUnsupported(HypervisorError):
    """--transport names a device bus this backend does not have."""


class SnapshotUnsupported(HypervisorError):
    """This backend (or its device bus) cannot save or restore a running guest."""


class NotInitialized(HypervisorError):
    """run() or a device operation came before initialize()."""


class TooManyVcpus(HypervisorError):
    """More vCPUs than the backend (or its MP table) can give a guest."""
