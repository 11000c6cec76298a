"""The harness's own backends, offered to the launcher's registry (the launcher never imports
the harness): `fake` (harness.fakes.lguest_host) and `qemu` (harness.qemu); what each backend
needs from the host; and `auto`, the choice by measurement.

    auto -> kvm     on ordinary KVM (a recipe guest is ready in ~5 s, and it is our VMM)
    auto -> qemu    where /dev/kvm is missing (or LGUEST_HARNESS_HIDE_KVM=1 hides it), or where
                    KVM emulates guest kernel code (kvm_pvm: ~20 s a boot, QEMU-TCG ~1 s)
"""
from __future__ import annotations

import os

from launcher.hostquirks import HIDE_KVM_ENV, detect_host, guest_kernel_code_slow, kvm_present


def register() -> None:
    from harness import qemu
    from harness.fakes.lguest_host import register as register_fake
    register_fake()
    qemu.register()


def lacks(backend: str) -> str | None:
    """What this host lacks for backend (a device, a program), or None."""
    from harness import qemu
    needs = {
        "kvm": (kvm_present, "/dev/kvm"),
        "lguest": (lambda: os.path.exists("/dev/lguest"), "/dev/lguest"),
        "qemu": (lambda: qemu.available() is not None, f"{qemu.BINARY} (apt-get install qemu-system-x86)"),
    }
    present, what = needs.get(backend, (lambda: True, ""))
    return None if present() else what


def choose() -> tuple[str, str]:
    """(backend, why) for --guest-backend auto."""
    if not kvm_present():
        hidden = f" ({HIDE_KVM_ENV}=1)" if os.environ.get(HIDE_KVM_ENV) == "1" else ""
        return "qemu", f"this host has no /dev/kvm{hidden}: QEMU with TCG"
    host = detect_host()
    if guest_kernel_code_slow(host):
        return "qemu", (f"/dev/kvm is {host.value}, which emulates guest kernel code (~20 s a boot): "
                        "QEMU with TCG (~1 s)")
    return "kvm", "ordinary KVM: our launcher"
