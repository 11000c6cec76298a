"""`lguest-harness demo`: build (or reuse) the recipe kernel and initramfs and boot them.

Interactive when stdin is a terminal (you get the guest's shell; `poweroff -f` ends it),
scripted otherwise: wait for the ready marker, run a few commands, power off.
"""
from __future__ import annotations

import os
import sys
import time

from harness.initramfs import build_initramfs
from harness.kernel import KernelBuildError, cache_root, ensure_kernel
from harness.launch import GuestSpec, boot

HELP = "boot the recipe guest under KVM (builds the kernel on first use)"
SCRIPT = ("uname -a", "cat /proc/cmdline", "grep MemTotal /proc/meminfo")


def configure(parser) -> None:
    parser.add_argument("--mem", type=int, default=64, help="guest memory in MiB (default 64)")
    parser.add_argument("--backend", help="hypervisor backend (default: the launcher's)")


def run(args) -> int:
    try:
        kernel = ensure_kernel()
    except KernelBuildError as err:
        print(f"lguest-harness demo: {err}", file=sys.stderr)
        return 1
    initrd = build_initramfs(cache_root() / "demo" / "initramfs.cpio")
    spec = GuestSpec(kernel=kernel.vmlinux, initrd=initrd, mem=args.mem, backend=args.backend)
    if sys.stdin.isatty():
        argv = [a for a in spec.argv() if a != "--verbose"]
        print("lguest-harness demo: booting; type `poweroff -f` in the guest to end", flush=True)
        os.execv(argv[0], argv)
    return _scripted(spec)


def _scripted(spec: GuestSpec) -> int:
    started = time.monotonic()
    print(f"lguest-harness demo: booting {spec.kernel} with {spec.mem} MiB", flush=True)
    guest = boot(spec, cache_root() / "demo", name="demo", wait=False)
    guest.serial.echo_to(sys.stdout)
    guest.wait_ready()
    print(f"\nlguest-harness demo: ready after {time.monotonic() - started:.1f} s", flush=True)
    for command in SCRIPT:
        guest.sendline(command)
        guest.expect(guest.prompt)
    status = guest.poweroff()
    print(f"\nlguest-harness demo: launcher exited with status {status} "
          f"after {time.monotonic() - started:.1f} s", flush=True)
    return status
