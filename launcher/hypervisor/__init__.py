"""Hypervisor backends behind one interface (base.Backend), chosen by name."""
from __future__ import annotations

import importlib

from launcher.hypervisor.errors import UnknownBackend

# name -> "module:class"; the lguest and fake backends register here when they land.
BACKENDS = {
    "kvm": "launcher.hypervisor.kvm:KvmBackend",
}


def backend_class(name: str):
    try:
        module_name, class_name = BACKENDS[name].split(":")
    except KeyError:
        raise UnknownBackend(f"no hypervisor backend named {name!r} (known: {', '.join(sorted(BACKENDS))})") from None
    return getattr(importlib.import_module(module_name), class_name)
