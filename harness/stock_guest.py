"""A guest on Debian's stock kernel: the bzImage harness.nested caches, and an initramfs that
loads its virtio drivers (modules there: virtio_pci, virtio_blk, virtio_net, virtio_console)
before the ready marker.  Such a kernel has no virtio-mmio command-line devices, so the
launcher puts the devices on PCI by default.  It boots on ordinary KVM only (kvm_pvm needs the
recipe kernel's compatibility patch).

    vmlinuz, initrd = stock_guest(tmp_dir)
    guest_factory(kernel=vmlinuz, initrd=initrd, block=disk, net=ns)
"""
from __future__ import annotations

from pathlib import Path

from harness.initramfs import build_initramfs
from harness.nested import ensure_stock_kernel, modules_in_load_order

GUEST_MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "virtio_console")
MODULE_DIR = "root"             # an existing directory of the harness initramfs
HVC_WAIT = "i=0; while [ ! -c /dev/hvc0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done"


def stock_guest(workdir: Path, log=print) -> tuple[Path, Path]:
    """(vmlinuz, initramfs) for a stock-kernel guest; the initramfs goes to workdir."""
    vmlinuz, modules_dir = ensure_stock_kernel(log)
    modules = modules_in_load_order(modules_dir, GUEST_MODULES)
    files = {f"{MODULE_DIR}/{path.name}": path for path in modules}
    # the console's hvc0 appears when virtio_console has probed its function: wait for it so
    # /init finds it for the command channel's agent
    commands = (*(f"insmod /{MODULE_DIR}/{path.name}" for path in modules), HVC_WAIT)
    initrd = build_initramfs(Path(workdir) / "stock-initramfs.cpio", extra_files=files, commands=commands)
    return vmlinuz, initrd
