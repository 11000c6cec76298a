"""Network namespaces that tests create and remove themselves.

A guest's tap lives in such a namespace (the launcher runs inside it), so guest
traffic never leaves namespaces the test made.
"""
from __future__ import annotations

import itertools
import os
import subprocess
from dataclasses import dataclass

_ids = itertools.count()


@dataclass(frozen=True)
class NetNamespace:
    name: str
    host_ip: str = "10.213.0.1"      # the tap's address, inside the namespace
    guest_ip: str = "10.213.0.2"
    prefix: int = 24

    @property
    def tunnet(self) -> str:
        """The launcher's --tunnet value for this namespace."""
        return self.host_ip

    @property
    def guest_cmdline(self) -> str:
        """Kernel ip= option that gives the guest its address without user space."""
        return f"ip={self.guest_ip}::{self.host_ip}:255.255.255.0::eth0:off"

    def run(self, *argv: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], **kwargs)

    def popen(self, *argv: str, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.name, *argv], **kwargs)


def create(prefix: str = "lh") -> NetNamespace:
    ns = NetNamespace(f"{prefix}{os.getpid()}x{next(_ids)}")
    subprocess.run(["ip", "netns", "add", ns.name], check=True)
    subprocess.run(["ip", "netns", "exec", ns.name, "ip", "link", "set", "lo", "up"], check=True)
    return ns


def remove(ns: NetNamespace) -> None:
    subprocess.run(["ip", "netns", "del", ns.name], check=False)
