"""/dev/kvm and the VM-level ioctls, through the cffi bindings in native.kvm.

Every failing ioctl becomes IoctlFailed naming the ioctl and errno; EINTR is the
one errno that is returned instead of raised (KVM_RUN interrupted on purpose).
"""
from __future__ import annotations

import errno
import os

from native.kvm import ffi, lib

from launcher.hypervisor.errors import BackendUnavailable, CapabilityMissing, IoctlFailed

KVM_DEVICE = "/dev/kvm"
_NAMES = {getattr(lib, n): n for n in dir(lib) if n.startswith("KVM_") and n[4:7] in ("GET", "SET", "CRE", "RUN", "IRQ", "IOE", "CHE")}


def ioctl(fd: int, request: int, arg=ffi.NULL, *, allow_eintr: bool = False) -> int:
    if isinstance(arg, int):
        r = lib.lh_ioctl_int(fd, request, arg)
    else:
        r = lib.lh_ioctl(fd, request, arg)
    if r < 0:
        if allow_eintr and r == -errno.EINTR:
            return r
        name = _NAMES.get(request, f"ioctl {request:#x}")
        raise IoctlFailed(f"{name} failed: {os.strerror(-r)} (errno {errno.errorcode.get(-r, -r)})")
    return r


class KvmSystem:
    """The open /dev/kvm: API version, capabilities, CPUID, vCPU mmap size."""

    REQUIRED_CAPS = ("KVM_CAP_USER_MEMORY", "KVM_CAP_IRQCHIP", "KVM_CAP_PIT2", "KVM_CAP_SET_TSS_ADDR")

    def __init__(self, path: str = KVM_DEVICE):
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise BackendUnavailable(
                f"cannot open {path}: {exc.strerror} (is the kvm module loaded and are you in the kvm group?)"
            ) from exc
        try:
            self._check()
        except BaseException:
            os.close(self.fd)
            raise

    def _check(self) -> None:
        version = ioctl(self.fd, lib.KVM_GET_API_VERSION, 0)
        if version != lib.KVM_API_VERSION:
            raise CapabilityMissing(f"KVM API version {version}, expected {lib.KVM_API_VERSION}")
        for cap in self.REQUIRED_CAPS:
            if not self.has(getattr(lib, cap)):
                raise CapabilityMissing(f"this host's KVM lacks {cap}")

    def has(self, cap: int) -> int:
        return ioctl(self.fd, lib.KVM_CHECK_EXTENSION, cap)

    def vcpu_mmap_size(self) -> int:
        return ioctl(self.fd, lib.KVM_GET_VCPU_MMAP_SIZE, 0)

    def supported_cpuid(self):
        """A struct kvm_cpuid2 * holding what KVM supports (grown until it fits)."""
        nent = 64
        while True:
            cpuid = ffi.new("struct kvm_cpuid2 *", {"nent": nent, "entries": nent})
            cpuid.nent = nent
            r = lib.lh_ioctl(self.fd, lib.KVM_GET_SUPPORTED_CPUID, cpuid)
            if r == -errno.E2BIG and nent < 4096:
                nent *= 2
                continue
            if r < 0:
                ioctl(self.fd, lib.KVM_GET_SUPPORTED_CPUID, cpuid)  # raises with the name
            return cpuid

    def create_vm(self) -> int:
        return ioctl(self.fd, lib.KVM_CREATE_VM, 0)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
