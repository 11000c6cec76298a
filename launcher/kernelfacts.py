"""What a kernel image can do, read from the files beside it (its config, its System.map).

Used where the launcher must choose for the user: virtio-mmio devices reach a kernel only
through `virtio_mmio.device=` (CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES, built in); Debian's stock
kernels, for one, lack it and find their devices on PCI instead.
"""
from __future__ import annotations

from pathlib import Path

from launcher.symbols import SystemMap, beside

MMIO_CMDLINE_OPTION = "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES"
MMIO_CMDLINE_SYMBOL = "vm_cmdline_set"      # virtio_mmio.c's device= parameter handler


def config_option(kernel: Path, name: str) -> str | None:
    """The option's value in the kernel's config ('n' when the config says it is not set),
    or None when no config is beside the kernel."""
    for path in [*beside(kernel, "config"), Path(kernel).parent / ".config"]:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith(name + "="):
                return line.split("=", 1)[1]
        return "n"
    return None


def mmio_cmdline_devices(kernel: Path, system_map: SystemMap | None = None) -> bool | None:
    """Whether the kernel takes virtio_mmio.device=; None when nothing beside it says."""
    value = config_option(kernel, MMIO_CMDLINE_OPTION)
    if value is not None:
        return value == "y"
    system_map = system_map or SystemMap.beside(kernel)
    return None if system_map is None else system_map.has(MMIO_CMDLINE_SYMBOL)
