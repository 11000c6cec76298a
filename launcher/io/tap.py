"""A Linux tap device as the net backend (the original's get_tun_device / configure_device).

/dev/net/tun with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR: every read and write is one Ethernet
frame preceded by a struct virtio_net_hdr, the very bytes a virtio-net guest exchanges.
TUNSETVNETHDRSZ matches the header size the guest negotiated and TUNSETOFFLOAD hands the
guest only the receive offloads it accepted.  Address, up-state and bridge attachment are
netlink work, done with pyroute2.  With netns=, the tap is created inside that network
namespace (from a thread that joins it: setns changes only the calling thread).
"""
from __future__ import annotations

import fcntl
import ipaddress
import os
import struct
import threading
from typing import Callable, TypeVar

from pyroute2 import IPRoute
from pyroute2 import netns as pyroute2_netns

from launcher.errors import DeviceError

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
IFNAMSIZ = 16
IFREQ = struct.Struct("16sH22x")   # struct ifreq: ifr_name, ifr_flags, rest of the union

T = TypeVar("T")


class TapError(DeviceError):
    """The tap device could not be created or configured."""


def in_netns(name: str | None, fn: Callable[[], T]) -> T:
    """Run fn in network namespace `name` (None: here) and return its result."""
    if name is None:
        return fn()
    result: list = []

    def body():
        try:
            pyroute2_netns.setns(name, flags=0, fork=False)
            result.append((True, fn()))
        except BaseException as err:  # noqa: BLE001 - handed back to the caller below
            result.append((False, err))

    thread = threading.Thread(target=body, name=f"netns-{name}")
    thread.start()
    thread.join()
    ok, value = result[0]
    if not ok:
        raise value
    return value


def offload_flags(csum: bool, tso4: bool, tso6: bool, ecn: bool) -> int:
    """TUNSETOFFLOAD flags; the kernel takes TSO only together with checksum offload."""
    if not csum:
        return 0
    flags = TUN_F_CSUM
    flags |= TUN_F_TSO4 if tso4 else 0
    flags |= TUN_F_TSO6 if tso6 else 0
    flags |= TUN_F_TSO_ECN if ecn and (tso4 or tso6) else 0
    return flags


def _open_tap(name: str) -> tuple[int, str]:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        req = IFREQ.pack(name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
        reply = fcntl.ioctl(fd, TUNSETIFF, req)
    except OSError as err:
        os.close(fd)
        raise TapError(f"configuring /dev/net/tun for tap {name!r}: {err}") from err
    return fd, reply[:IFNAMSIZ].rstrip(b"\0").decode()


class TapBackend:
    """One tap device; `name` may contain %d ("tap%d") for the kernel to pick a number."""

    def __init__(self, name: str = "tap%d", *, netns: str | None = None,
                 address: str | None = None, bridge: str | None = None, up: bool = True):
        self.netns = netns
        self.fd, self.name = in_netns(netns, lambda: _open_tap(name))
        self.closed = False
        try:
            self.configure(10, None)
            self._setup_link(address, bridge, up)
        except BaseException:
            self.close()
            raise

    def _setup_link(self, address: str | None, bridge: str | None, up: bool) -> None:
        with IPRoute(netns=self.netns) if self.netns else IPRoute() as ipr:
            index = ipr.link_lookup(ifname=self.name)[0]
            if bridge is not None:
                found = ipr.link_lookup(ifname=bridge)
                if not found:
                    raise TapError(f"bridge {bridge!r} does not exist")
                ipr.link("set", index=index, master=found[0])
            if address is not None:
                iface = ipaddress.ip_interface(address)
                ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
            if up:
                ipr.link("set", index=index, state="up")

    # -- NetBackend -----------------------------------------------------------------------------
    def fileno(self) -> int | None:
        return None if self.closed else self.fd

    def configure(self, hdr_size: int, offloads) -> None:
        """Match the guest's header size and receive offloads (called at DRIVER_OK)."""
        try:
            fcntl.ioctl(self.fd, TUNSETVNETHDRSZ, struct.pack("i", hdr_size))
            flags = 0 if offloads is None else offload_flags(offloads.csum, offloads.tso4,
                                                             offloads.tso6, offloads.ecn)
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, flags)
        except OSError as err:
            raise TapError(f"tap {self.name}: setting header size {hdr_size} / offloads: {err}") from err

    def recv_into(self, views: list[memoryview]) -> int | None:
        try:
            return os.readv(self.fd, views)
        except BlockingIOError:
            return None

    def send(self, views: list[memoryview]) -> None:
        # One writev is one frame; tun never writes part of a frame.
        os.writev(self.fd, views)

    def close(self) -> None:
        if not self.closed:
            os.close(self.fd)
            self.closed = True
