"""The original Launcher's device flags, parsed into specs and built into device models.

Transport-neutral: the lguest bus (launcher.transports.lguest_page) and virtio-mmio put the
same list of devices in front of their guests.

    add_device_arguments(parser)            # --tunnet, --block, --block-ro, --rng
    specs = device_specs(args)              # [ConsoleSpec(), ...flags in command-line order]
    devices = build_devices(specs)          # VirtioDevice models over real host backends

Flags (as the 2.6.39 Launcher, plus --block-ro):
    --tunnet=IP[/PREFIX][:MAC]      a tap with that address (no /PREFIX: the address's class
                                    netmask, as the original's SIOCSIFADDR gave it)
    --tunnet=bridge:NAME[:MAC]      a tap attached to bridge NAME
    --block=FILE                    a read-write disk over FILE
    --block-ro=FILE                 a read-only disk (VIRTIO_BLK_F_RO); FILE is opened read-only
    --rng                           an entropy device fed from /dev/urandom
The console is always device 0, then the flags' devices in the order they were given.
Every bad value raises DeviceSpecError with one line that names the flag and the rule.
"""
from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import re
from typing import Callable

from launcher.devices.block import SECTOR_SIZE
from launcher.errors import LauncherError

DEVICE_DEST = "device_flags"      # argparse dest: [(flag, value)] in command-line order
BRIDGE_PREFIX = "bridge:"
_MAC_BYTE = re.compile(r"[0-9A-Fa-f]{1,2}")


class DeviceSpecError(LauncherError):
    """A device flag's value is malformed, or its host resource cannot be had."""


# -- specs ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ConsoleSpec:
    kind = "console"

    def describe(self) -> str:
        return "console"


@dataclasses.dataclass(frozen=True)
class NetSpec:
    """A tap: routed with an address (interface = "IP/PREFIX") or attached to a bridge."""
    kind = "net"
    interface: str | None = None
    bridge: str | None = None
    mac: bytes | None = None

    def describe(self) -> str:
        target = f"attached to bridge: {self.bridge}" if self.bridge else self.interface
        mac = f" mac {format_mac(self.mac)}" if self.mac else ""
        return f"tun {target}{mac}"


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    kind = "block"
    path: str
    read_only: bool = False

    def describe(self) -> str:
        return f"virtblock {self.path}" + (" (read-only)" if self.read_only else "")


@dataclasses.dataclass(frozen=True)
class RngSpec:
    kind = "rng"

    def describe(self) -> str:
        return "rng"


DeviceSpec = ConsoleSpec | NetSpec | BlockSpec | RngSpec


# -- argparse ---------------------------------------------------------------------------------

class _InOrder(argparse.Action):
    """Appends (flag, value) to one shared list, so the bus keeps command-line order."""

    def __call__(self, parser, namespace, values, option_string=None):
        found = getattr(namespace, DEVICE_DEST, None)
        flags = list(found) if found else []   # never mutate the shared default
        flags.append((self.dest, values))
        setattr(namespace, DEVICE_DEST, flags)


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("devices (the console is always first, then these in order)")
    group.add_argument("--tunnet", metavar="(IP[:MAC]|bridge:NAME[:MAC])", dest="tunnet", action=_InOrder,
                       help="a virtio-net device over a new tap: routed with IP, or on bridge NAME")
    group.add_argument("--block", metavar="FILE", dest="block", action=_InOrder,
                       help="a virtio-blk disk over FILE (at least one 512-byte sector; a trailing "
                            "partial sector is not shown to the guest)")
    group.add_argument("--block-ro", metavar="FILE", dest="block_ro", action=_InOrder,
                       help="a read-only virtio-blk disk over FILE")
    group.add_argument("--rng", dest="rng", nargs=0, action=_InOrder,
                       help="a virtio-rng device fed from /dev/urandom")
    parser.set_defaults(**{DEVICE_DEST: []})


def flag_specs(args) -> list[DeviceSpec]:
    """One spec per device flag, in command-line order."""
    return [_PARSERS[flag](value) for flag, value in getattr(args, DEVICE_DEST, None) or []]


def device_specs(args) -> list[DeviceSpec]:
    """The console, then one spec per device flag in command-line order."""
    return [ConsoleSpec(), *flag_specs(args)]


# -- parsing one flag -------------------------------------------------------------------------

def parse_tunnet(text: str) -> NetSpec:
    """IP[/PREFIX][:MAC] or bridge:NAME[:MAC] (setup_tun_net: the MAC follows the first ':')."""
    bridging = text.startswith(BRIDGE_PREFIX)
    rest = text[len(BRIDGE_PREFIX):] if bridging else text
    target, sep, mac_text = rest.partition(":")
    mac = parse_mac(mac_text, "--tunnet") if sep else None
    if bridging:
        if not target:
            raise DeviceSpecError(f"--tunnet={text}: must specify bridge name (bridge:NAME[:MAC])")
        return NetSpec(bridge=target, mac=mac)
    return NetSpec(interface=parse_ip(target, "--tunnet"), mac=mac)


def parse_ip(text: str, flag: str = "--tunnet") -> str:
    """"IP" or "IP/PREFIX" -> "IP/PREFIX"; a bare address gets its class's netmask."""
    addr_text, slash, prefix_text = text.partition("/")
    try:
        addr = ipaddress.IPv4Address(addr_text)
    except ValueError:
        raise DeviceSpecError(f"{flag}: failed to parse IP address {addr_text!r} "
                              f"(want a dotted quad like 192.168.19.1)") from None
    if slash:
        if not prefix_text.isdigit() or not 0 < int(prefix_text) <= 32:
            raise DeviceSpecError(f"{flag}: prefix length {prefix_text!r} of {text!r} is not 1..32")
        return f"{addr}/{int(prefix_text)}"
    return f"{addr}/{classful_prefix(addr, flag)}"


def classful_prefix(addr: ipaddress.IPv4Address, flag: str = "--tunnet") -> int:
    """The netmask SIOCSIFADDR gives an address (the kernel's inet_abc_len)."""
    first = int(addr) >> 24
    if int(addr) == 0 or first >= 224:
        raise DeviceSpecError(f"{flag}: {addr} is not a unicast host address (class A, B or C)")
    return 8 if first < 128 else 16 if first < 192 else 24


def parse_mac(text: str, flag: str = "--tunnet") -> bytes:
    parts = text.split(":")
    if len(parts) != 6 or not all(_MAC_BYTE.fullmatch(p) for p in parts):
        raise DeviceSpecError(f"{flag}: failed to parse MAC address {text!r} "
                              f"(want six hex bytes like 52:54:00:12:34:56)")
    return bytes(int(p, 16) for p in parts)


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def parse_block(text: str, read_only: bool = False) -> BlockSpec:
    flag = "--block-ro" if read_only else "--block"
    if not text:
        raise DeviceSpecError(f"{flag}: needs a FILE")
    if not os.path.exists(text):
        raise DeviceSpecError(f"{flag}={text}: no such file (create the disk image first)")
    if os.path.isdir(text):
        raise DeviceSpecError(f"{flag}={text}: is a directory, not a disk image")
    if not os.access(text, os.R_OK if read_only else os.R_OK | os.W_OK):
        need = "readable" if read_only else "readable and writable (or use --block-ro)"
        raise DeviceSpecError(f"{flag}={text}: the file is not {need}")
    size = _disk_size(text, flag)
    if size < SECTOR_SIZE:
        raise DeviceSpecError(f"{flag}={text}: {size} bytes is less than one {SECTOR_SIZE}-byte sector; a disk "
                              f"needs at least one (a trailing partial sector is never shown to the guest)")
    return BlockSpec(text, read_only)


def _disk_size(path: str, flag: str) -> int:
    """The size a disk shows: lseek to the end works for block devices too."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise DeviceSpecError(f"{flag}={path}: {err.strerror}") from err
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


_PARSERS: dict[str, Callable[[object], DeviceSpec]] = {
    "tunnet": parse_tunnet,
    "block": parse_block,
    "block_ro": lambda text: parse_block(text, read_only=True),
    "rng": lambda _: RngSpec(),
}


# -- building devices -------------------------------------------------------------------------

@dataclasses.dataclass
class HostBackends:
    """Makes the host side of each device; the defaults are the real ones (stdio, tap,
    file, /dev/urandom).  Tests and the fake host swap in launcher-free doubles."""
    console: Callable[[], object] = None
    net: Callable[[NetSpec], object] = None
    block: Callable[[BlockSpec], object] = None
    entropy: Callable[[], object] = None

    def __post_init__(self):
        self.console = self.console or _stdio_console
        self.net = self.net or _tap
        self.block = self.block or _block_file
        self.entropy = self.entropy or _urandom


def _stdio_console():
    from launcher.io.console_backends import StdioConsole
    return StdioConsole()


def _tap(spec: NetSpec):
    from launcher.io.tap import TapBackend   # pyroute2 is slow to import: only when asked
    return TapBackend(address=spec.interface, bridge=spec.bridge)


def _block_file(spec: BlockSpec):
    from launcher.io.block_file import FileBlockBackend
    return FileBlockBackend(spec.path, read_only=spec.read_only)


def _urandom():
    from launcher.io.entropy import UrandomBackend
    return UrandomBackend()


class _LateTrigger:
    """Looks up device.trigger at interrupt time: the transport sets it after building."""

    def __init__(self, device):
        self.device = device

    def trigger(self, queue_index: int) -> None:
        self.device.trigger.trigger(queue_index)

    def config_changed(self) -> None:
        self.device.trigger.config_changed()


def build_devices(specs: list[DeviceSpec], backends: HostBackends | None = None, *,
                  strict: bool = False, runners: bool = True) -> list:
    """One VirtioDevice per spec, in order.  With runners, each gets its service threads
    (launcher.io.service.QueueWorkers), started when the device goes live.  On failure the
    devices already built are closed and DeviceSpecError names the device that failed."""
    backends = backends or HostBackends()
    devices: list = []
    try:
        for spec in specs:
            device = _build_one(spec, backends, strict)
            devices.append(device)
            if runners:
                from launcher.io.service import QueueWorkers
                device.runner = QueueWorkers(device, _LateTrigger(device))
    except BaseException:
        close_devices(devices)
        raise
    return devices


TEST_FAULT_ENV = "LGUEST_HARNESS_TEST_FAULT"     # test-only broken device models, by name


def _test_fault(backend):
    """The block backend, or (LGUEST_HARNESS_TEST_FAULT=blk-flip-reads) one whose reads are
    corrupted: how the differential runs' own tests prove that they catch a broken device."""
    from launcher.devices.block import FlippedReads
    return FlippedReads(backend) if os.environ.get(TEST_FAULT_ENV) == "blk-flip-reads" else backend


def _build_one(spec: DeviceSpec, backends: HostBackends, strict: bool):
    from launcher.devices.block import BlockDevice
    from launcher.devices.console import ConsoleDevice
    from launcher.devices.net import NetDevice
    from launcher.devices.rng import RngDevice
    try:
        if isinstance(spec, ConsoleSpec):
            return ConsoleDevice(backends.console(), strict=strict)
        if isinstance(spec, NetSpec):
            return NetDevice(backends.net(spec), mac=spec.mac, strict=strict)
        if isinstance(spec, BlockSpec):
            return BlockDevice(_test_fault(backends.block(spec)), strict=strict)
        if isinstance(spec, RngSpec):
            return RngDevice(backends.entropy(), strict=strict)
    except OSError as err:
        raise DeviceSpecError(f"{spec.describe()}: {err.strerror or err}") from err
    except LauncherError as err:
        raise DeviceSpecError(f"{spec.describe()}: {err}") from err
    raise DeviceSpecError(f"no device model for spec {spec!r}")


def close_devices(devices: list) -> None:
    """Close every device (threads joined, fds closed), the last first; keeps going on errors."""
    first: BaseException | None = None
    for device in reversed(devices):
        try:
            device.close()
        except Exception as err:   # noqa: BLE001 - close the rest, then report the first
            first = first or err
    if first is not None:
        raise first
