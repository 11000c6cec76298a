"""What one guest is: a plain, validated, hashable description the life cycle is built from.

`lguest-harness boot`'s flags map onto LaunchConfig one to one (launcher.cli), and so does
the Python API:

    config = LaunchConfig(mem_mb=64, kernel=Path("vmlinux"), initrd=Path("initrd.cpio"),
                          kernel_args=("quiet",), devices=(BlockSpec("disk.img"),))

Every value is checked when the object is made, so a bad one is one LauncherError naming
the rule, before any guest memory or hypervisor exists.
"""
from __future__ import annotations

import dataclasses
import math
import os
import pwd
from pathlib import Path

from launcher.devspec import BlockSpec, DeviceSpec, FsSpec
from launcher.errors import LauncherError
from launcher.hypervisor import backend_class, default_backend

DEFAULT_TIMEOUT = 600.0
MIN_MEM_MB = 2
MAX_MEM_MB = 3072  # below the 32-bit PCI hole, where KVM's TSS pages live
HVC_CHOICES = ("pty", "stdio", "none")
TRANSPORT_CHOICES = ("mmio", "pci")


class UsageError(LauncherError):
    """A configuration value is out of range or not supported."""


class UnknownUser(LauncherError):
    def __init__(self, name: str):
        super().__init__(f"--username={name}: no such user (getpwnam failed)")


class ChrootUnusable(LauncherError):
    """--chroot names no directory, or chroot/chdir failed."""


def parse_mem_mb(text: str) -> int:
    """MEM_MB as the command line gives it ("64", "0x40")."""
    try:
        return int(text, 0)
    except ValueError:
        raise UsageError(f"MEM_MB must be a whole number of MiB, not {text!r}") from None


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """One guest.  `devices` are the flags' devices in command-line order; the bus the
    backend declares puts the console first where it has one."""

    mem_mb: int
    kernel: Path
    kernel_args: tuple[str, ...] = ()
    initrd: Path | None = None
    devices: tuple[DeviceSpec, ...] = ()
    backend: str = dataclasses.field(default_factory=default_backend)
    timeout: float = DEFAULT_TIMEOUT
    hvc: str | None = None              # virtio-mmio: where hvc0 goes (pty, stdio, none)
    transport: str | None = None        # kvm: mmio or pci (None: the backend chooses for the kernel)
    username: str | None = None         # become this user once the hypervisor is set up
    chroot: str | None = None           # chroot here once the hypervisor is set up
    system_map: Path | None = None      # for crash reports (default: beside the kernel)
    ready_marker: str | None = None     # note when this first appears on the console
    cpus: int = 1                       # vCPUs (kvm: one thread each, found through the MP table)

    def __post_init__(self):
        if not MIN_MEM_MB <= self.mem_mb <= MAX_MEM_MB:
            raise UsageError(f"MEM_MB must be between {MIN_MEM_MB} and {MAX_MEM_MB}, not {self.mem_mb}")
        if not self.timeout > 0:        # also refuses nan
            raise UsageError(f"--timeout must be positive (inf: no limit), not {self.timeout:g}")
        if self.hvc is not None and self.hvc not in HVC_CHOICES:
            raise UsageError(f"--hvc must be one of {', '.join(HVC_CHOICES)}, not {self.hvc!r}")
        if self.transport is not None and self.transport not in TRANSPORT_CHOICES:
            raise UsageError(f"--transport must be one of {', '.join(TRANSPORT_CHOICES)}, not {self.transport!r}")
        most = backend_class(self.backend).max_cpus     # UnknownBackend names the known ones
        if isinstance(self.cpus, bool) or not isinstance(self.cpus, int) or not 1 <= self.cpus <= most:
            raise UsageError(f"--cpus must be a whole number from 1 to {most} on the {self.backend} backend, "
                             f"not {self.cpus!r}")
        object.__setattr__(self, "kernel", Path(self.kernel))
        object.__setattr__(self, "kernel_args", tuple(self.kernel_args))
        object.__setattr__(self, "devices", tuple(self.devices))
        if self.initrd is not None:
            object.__setattr__(self, "initrd", Path(self.initrd))
        if self.system_map is not None:
            object.__setattr__(self, "system_map", Path(self.system_map))
        _refuse_shared_writable_disks(self.devices)
        if self.shares and self.backend != "kvm":
            raise UsageError(f"--share needs the kvm backend (a vhost-user backend serves the queues through "
                             f"KVM ioeventfds and irqfds), not {self.backend}")
        self.user()                     # unknown user / missing chroot: refused now
        if self.chroot is not None and not os.path.isdir(self.chroot):
            raise ChrootUnusable(f"--chroot={self.chroot}: no such directory")

    @property
    def shares(self) -> tuple[FsSpec, ...]:
        """The virtio-fs shares: their backends map guest RAM, so it is a shared memfd."""
        return tuple(spec for spec in self.devices if isinstance(spec, FsSpec))

    @property
    def ram_size(self) -> int:
        return self.mem_mb << 20

    @property
    def time_limit(self) -> float | None:
        """Seconds a run may take; None for --timeout inf."""
        return None if math.isinf(self.timeout) else self.timeout

    def user(self) -> pwd.struct_passwd | None:
        if self.username is None:
            return None
        try:
            return pwd.getpwnam(self.username)
        except KeyError:
            raise UnknownUser(self.username) from None


def _refuse_shared_writable_disks(devices: tuple) -> None:
    """Two writable disks over one file would each cache and overwrite the other's sectors."""
    seen: dict[tuple[int, int], str] = {}
    for spec in devices:
        if not isinstance(spec, BlockSpec) or spec.read_only:
            continue
        try:
            st = os.stat(spec.path)
        except OSError:
            continue        # parse_block already named a missing file; the device build will too
        key = (st.st_dev, st.st_ino)
        if key in seen:
            raise UsageError(f"--block={spec.path}: the same file as --block={seen[key]}; two writable disks "
                             f"over one file would corrupt it (give the second as --block-ro)")
        seen[key] = spec.path
