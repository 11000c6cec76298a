"""Hypervisor backends behind one interface (base.Backend), chosen by name.

A backend is registered as "module:callable": a Backend class, which declares the device
bus its guests find their devices on (Backend.bus) and its boot layout, so nothing else
needs to know which backend it is.  The harness registers its fake backend at start-up
(harness.fakes.lguest_host.register); the launcher never imports it.
"""
from __future__ import annotations

import importlib
import os

from launcher.hostquirks import kvm_present
from launcher.hypervisor.errors import UnknownBackend

# name -> "module:callable"
BACKENDS = {
    "kvm": "launcher.hypervisor.kvm:KvmBackend",
    "lguest": "launcher.hypervisor.lguest:LguestBackend",
}


def register_backend(name: str, target: str) -> None:
    """Offer another backend under `name` (idempotent)."""
    BACKENDS[name] = target


def default_backend() -> str:
    """kvm where /dev/kvm exists; else lguest where /dev/lguest does; else kvm (which then
    says clearly why it cannot run)."""
    if not kvm_present() and os.path.exists("/dev/lguest"):
        return "lguest"
    return "kvm"


def backend_class(name: str):
    try:
        module_name, class_name = BACKENDS[name].split(":")
    except KeyError:
        raise UnknownBackend(f"no hypervisor backend named {name!r} (known: {', '.join(sorted(BACKENDS))})") from None
    return getattr(importlib.import_module(module_name), class_name)
