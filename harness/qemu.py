"""QEMU as a second engine: `lguest-harness boot --backend qemu` runs Debian's qemu-system-x86_64
as the VMM for the same flags, so a guest test runs unchanged on it (a reference for our device
models, and guests where /dev/kvm is absent or slow).

    flags (launcher.cli) -> plan(args) -> QemuPlan: QEMU's argv, taps to make, sockets
    run_vmm(args) -> harness.qemu_relay: QEMU's serial and hvc0 relayed -> the same exit statuses

The machine is `-M microvm` with virtio-mmio devices (the recipe kernel has no PCI or ACPI;
microvm announces its devices with `virtio_mmio.device=` as our launcher does), in command-line
order behind the virtio console, as on our bus.  QEMU boots the bzImage (a vmlinux has no boot
protocol QEMU knows without PVH): given a vmlinux, the bzImage beside it is used.  Accel: KVM
on ordinary KVM, TCG where /dev/kvm is missing or emulates guest kernel code (kvm_pvm: there
`-accel kvm` hangs after the real-mode setup code).  TCG needs none of the launcher's kvm_pvm
command-line quirks, so none are added.

Flags QEMU cannot honour (--username, --chroot: the lguest Launcher's privilege drop;
--system-map: our crash reports; --hvc=stdio: stdio is the 8250's) are a usage error, status 2.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from launcher.devspec import BlockSpec, NetSpec, RngSpec, flag_specs, format_mac
from launcher.hostquirks import HostKind, detect_host, guest_kernel_code_slow, kvm_present
from launcher.hypervisor import register_backend
from launcher.loader import KernelKind, kernel_kind

BINARY = "qemu-system-x86_64"
MACHINE = "microvm,x-option-roms=off,pit=on,pic=on,isa-serial=on,rtc=on,acpi=off"
EXIT_USAGE = 2
REFUSED = (     # (args attribute, why QEMU cannot honour it)
    ("username", "--username is the lguest Launcher's privilege drop after setup; run the qemu backend as that user"),
    ("chroot", "--chroot is the lguest Launcher's privilege drop after setup; QEMU is not chrooted by us"),
    ("system_map", "--system-map feeds our KVM backend's crash reports; QEMU makes none"),
)


class QemuUsage(Exception):
    """A flag the qemu backend cannot honour, or a kernel it cannot boot: one line, status 2."""


class QemuBackend:
    """The launcher's backend registry entry for QEMU: what the harness and the CLI ask of a
    backend class (kernels it boots, snapshots), and run_vmm, which takes over `boot`."""

    name = "qemu"
    snapshots = False
    boots = frozenset({KernelKind.ELF64, KernelKind.BZIMAGE, KernelKind.BZIMAGE_ELF32, KernelKind.BZIMAGE_ELF64})

    @staticmethod
    def run_vmm(args) -> int:
        from harness.qemu_relay import run
        return run(args)


def register() -> None:
    """Offer `--backend qemu` (the launcher never imports the harness)."""
    register_backend("qemu", "harness.qemu:QemuBackend")


def available() -> str | None:
    """Path of qemu-system-x86_64, or None when it is not installed."""
    return shutil.which(BINARY)


def accel(host: HostKind | None = None) -> str:
    """kvm on ordinary KVM; tcg where /dev/kvm is missing or guest kernel code is emulated."""
    host = detect_host() if host is None else host
    return "kvm" if kvm_present() and not guest_kernel_code_slow(host) else "tcg"


@dataclass(frozen=True)
class Tap:
    """A tap the relay makes in its network namespace before QEMU opens it (ifname=)."""

    name: str
    address: str | None     # IP/PREFIX on the tap, routed
    bridge: str | None      # or attached to this bridge


@dataclass(frozen=True)
class QemuPlan:
    argv: tuple[str, ...]
    hvc: bool                   # hvc0 is on, over the hvc chardev fd
    taps: tuple[Tap, ...]


@dataclass(frozen=True)
class ChardevFds:
    """QEMU's ends of the socket pairs its 8250 and hvc0 are on (inherited by QEMU)."""

    serial: int
    hvc: int


def refusals(args) -> list[str]:
    """One line per flag the qemu backend cannot honour."""
    found = [why for attr, why in REFUSED if getattr(args, attr, None)]
    if getattr(args, "hvc", None) == "stdio":
        found.append("--hvc=stdio: the qemu backend's stdio is the 8250 console; use --hvc=pty or none")
    return found


def bzimage_for(kernel: Path) -> Path:
    """The file QEMU boots: kernel itself if a bzImage, else a bzImage beside the vmlinux
    (the recipe's cache) or in the tree it was built in."""
    with open(kernel, "rb") as f:
        kind = kernel_kind(f.read(0x1000))
    if kind is not None and kind not in (KernelKind.ELF32, KernelKind.ELF64):
        return kernel
    for candidate in (kernel.with_name("bzImage"), kernel.parent / "arch/x86/boot/bzImage"):
        if candidate.is_file():
            return candidate
    raise QemuUsage(f"{kernel} is a vmlinux, which QEMU cannot boot; give the bzImage, or keep it beside the "
                    f"vmlinux (as `lguest-harness kernel build` does) or at arch/x86/boot/bzImage of its tree")


def hvc_wanted(args, devices) -> bool:
    """As the KVM backend: hvc0 on a pty with --hvc=pty, or by default when devices are given."""
    return args.hvc == "pty" or (args.hvc is None and bool(devices))


def plan(args, fds: ChardevFds, tap_prefix: str = "lhq", qemu: str = BINARY,
         accelerator: str | None = None) -> QemuPlan:
    """QEMU's command line for the parsed `boot` flags; QemuUsage for one it cannot honour."""
    refused = refusals(args)
    if refused:
        raise QemuUsage("; ".join(refused))
    devices = flag_specs(args)      # the launcher's own checks: a missing disk file is one line
    argv = [qemu, "-M", MACHINE, "-accel", accelerator or accel(), "-m", f"{int(args.mem_mb, 0)}M",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", str(bzimage_for(Path(args.kernel))), "-append", " ".join(args.kernel_args or ()),
            "-chardev", f"socket,id=serial,fd={fds.serial}", "-serial", "chardev:serial"]
    if args.initrd:
        argv += ["-initrd", str(args.initrd)]
    hvc = hvc_wanted(args, devices)
    if hvc:     # the console first, as on our bus: hvc0
        argv += ["-device", "virtio-serial-device,max_ports=1", "-chardev", f"socket,id=hvc0,fd={fds.hvc}",
                 "-device", "virtconsole,chardev=hvc0"]
    taps = []
    for index, spec in enumerate(devices):
        argv += _device_argv(index, spec, taps, tap_prefix)
    return QemuPlan(tuple(argv), hvc, tuple(taps))


def _device_argv(index: int, spec, taps: list[Tap], tap_prefix: str) -> list[str]:
    if isinstance(spec, BlockSpec):
        read_only = ",readonly=on" if spec.read_only else ""
        return ["-drive", f"file={spec.path},format=raw,if=none,id=blk{index}{read_only}",
                "-device", f"virtio-blk-device,drive=blk{index}"]
    if isinstance(spec, NetSpec):
        tap = Tap(f"{tap_prefix}{len(taps)}", spec.interface, spec.bridge)
        taps.append(tap)
        mac = f",mac={format_mac(spec.mac)}" if spec.mac else ""
        return ["-netdev", f"tap,id=net{index},ifname={tap.name},script=no,downscript=no",
                "-device", f"virtio-net-device,netdev=net{index}{mac}"]
    if isinstance(spec, RngSpec):
        return ["-device", "virtio-rng-device"]
    raise QemuUsage(f"the qemu backend has no mapping for a {spec.describe()} device")
