"""One recipe guest with every virtio device on virtio-mmio, shared by the test_virtio_* modules.

A boot costs ~30-70 s on a kvm_pvm host, so the console, block, net and rng tests all talk
to one guest, booted on first use and torn down when the pytest session ends:

    virtio0  console  hvc0, on a pty the launcher announces on stderr
    virtio1  block    /dev/vda  rw, 16 MiB, host-written random data in its first 4 MiB
    virtio2  block    /dev/vdb  rw, an ext4 image made on the host with mkfs.ext4 -d
    virtio3  block    /dev/vdc  rw, 1 MiB; the host shrinks the file under the guest
    virtio4  net      eth0, a tap inside a network namespace this module creates and removes
    virtio5  rng      /dev/hwrng
    virtio6  block    /dev/vdd  read-only (--block-ro)

The launcher runs inside the namespace (ip netns exec), so the tap and every packet stay in it.
One such guest per backend (BACKENDS: our kvm, and QEMU as the reference VMM; a module's `vg`
fixture is parametrised over them), each booted on first use.
hvc0 is the console tests' own, so this guest has no command channel (harness.channel): its
commands are typed on the serial console.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.backends import lacks
from harness.console import Guest
from harness.initramfs import build_initramfs
from harness.kernel import ensure_kernel
from harness.launch import GuestSpec, boot

BACKENDS = ("kvm", "qemu")
MEM_MB = 96
READY_TIMEOUT = 400
HOST_IP, GUEST_IP, PREFIX = "10.213.7.1", "10.213.7.2", 24
RW_SIZE, RW_DATA = 16 << 20, 4 << 20
SHRINK_SIZE, SHRUNK_SIZE = 1 << 20, 512 << 10
EXT4_SIZE_MB = 8


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    return sha256(Path(path).read_bytes())


def netns_run(ns: str, *argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], **kwargs)


@dataclasses.dataclass
class VirtioGuest:
    guest: Guest
    netns: str
    workdir: Path
    rw_disk: Path
    ext4_disk: Path
    ext4_files: dict[str, bytes]
    shrink_disk: Path
    ro_disk: Path
    hvc_path: str
    backend: str

    def run(self, command: str, timeout: float = 120):
        return self.guest.run(command, timeout=timeout)

    def check(self, command: str, timeout: float = 120) -> str:
        """Run and insist on exit status 0; returns the output."""
        result = self.run(command, timeout)
        assert result.status == 0, f"`{command}` exited {result.status}:\n{result.output}"
        return result.output

    def close(self) -> None:
        try:
            if self.guest.child.isalive():
                try:
                    self.guest.poweroff(timeout=60)
                except AssertionError:
                    pass
        finally:
            self.guest.close()
            subprocess.run(["ip", "netns", "del", self.netns], check=False)


_shared: dict[str, VirtioGuest] = {}


def shared_guest(request, tmp_path_factory, backend: str = "kvm") -> VirtioGuest:
    """The session's virtio guest on backend, booted on first call; removed when the session ends.
    The kernel is the recipe's (harness.kernel.ensure_kernel: built once, cached by hash)."""
    missing = lacks(backend)
    if missing:
        pytest.skip(f"backend {backend} needs {missing}, which this host lacks")
    if backend not in _shared:
        workdir = Path(tmp_path_factory.mktemp(f"virtio-{backend}"))
        kernel = ensure_kernel(log=lambda msg: print(msg, file=sys.stderr, flush=True))
        _shared[backend] = _boot(workdir, kernel, backend)
        request.config.add_cleanup(lambda: _close_shared(backend))
    return _shared[backend]


def _close_shared(backend: str) -> None:
    shared = _shared.pop(backend, None)
    if shared is not None:
        shared.close()


def _make_disks(workdir: Path):
    rw = workdir / "rw.img"
    with open(rw, "wb") as f:
        f.write(secrets.token_bytes(RW_DATA))
        f.truncate(RW_SIZE)
    files = {"hello.txt": b"hello from an ext4 image made on the host\n",
             "blob.bin": secrets.token_bytes(200 * 1024),
             "sub/deep.txt": b"nested\n"}
    tree = workdir / "ext4-tree"
    for name, data in files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(data)
    ext4 = workdir / "fs.img"
    with open(ext4, "wb") as f:
        f.truncate(EXT4_SIZE_MB << 20)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "root_owner=0:0", "-d", str(tree), str(ext4)],
                          capture_output=True, text=True)
    assert made.returncode == 0, f"mkfs.ext4 -d failed: {made.stderr}"
    shrink = workdir / "shrink.img"
    shrink.write_bytes(secrets.token_bytes(SHRINK_SIZE))
    ro = workdir / "ro.img"
    ro.write_bytes(secrets.token_bytes(1 << 20))
    return rw, ext4, files, shrink, ro


def _make_netns(backend: str) -> str:
    name = f"lhvirtio{backend}{os.getpid()}"
    subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
    return name


def _boot(workdir: Path, kernel, backend: str) -> VirtioGuest:
    rw, ext4, files, shrink, ro = _make_disks(workdir)
    initrd = build_initramfs(workdir / "initramfs.cpio")
    ns = _make_netns(backend)
    try:
        spec = GuestSpec(
            kernel=Path(kernel.vmlinux), initrd=initrd, mem=MEM_MB, backend=backend,
            cmdline=("console=ttyS0", "panic=-1", "quiet",
                     f"ip={GUEST_IP}::{HOST_IP}:255.255.255.0::eth0:off"),
            block=(str(rw), str(ext4), str(shrink)), net=(f"{HOST_IP}/{PREFIX}",), rng=True,
            extra_args=(f"--block-ro={ro}",), netns=ns, timeout=3600,
            channel=False)      # test_virtio_console drives hvc0 itself: no lh-agent on it, commands typed
        guest = boot(spec, workdir, name=f"virtio-{backend}", ready_timeout=READY_TIMEOUT)
    except BaseException:
        subprocess.run(["ip", "netns", "del", ns], check=False)
        raise
    hvc = _hvc_path(guest)
    return VirtioGuest(guest, ns, workdir, rw, ext4, files, shrink, ro, hvc, backend)


def _hvc_path(guest: Guest, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while True:
        found = re.search(r"virtio console \(hvc0\) on (\S+)", guest.launcher_log)
        if found:
            return found.group(1)
        if time.monotonic() > deadline:
            raise AssertionError(f"the launcher never announced the hvc0 pty:\n{guest.launcher_log[-2000:]}")
        time.sleep(0.2)
