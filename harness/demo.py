"""`lguest-harness demo`: boot the recipe kernel (built or reused) or yours, with the harness's initramfs.

Interactive when stdin is a terminal (you get the guest's shell; `poweroff -f` ends it),
scripted otherwise: wait for the ready marker, run a few commands, power off.
`--kernel K` boots your own kernel instead of the recipe's, `--initrd I` your initramfs.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from harness.initramfs import READY_MARKER, build_initramfs
from harness.kernel import KernelBuildError, cache_root, ensure_kernel
from harness.launch import GuestSpec, boot
from harness.preflight import initrd_problem, kernel_problem

HELP = "boot a guest with a shell: the recipe kernel (built on first use) or yours (--kernel)"
SCRIPT = ("uname -a", "cat /proc/cmdline", "grep MemTotal /proc/meminfo")


def configure(parser) -> None:
    parser.add_argument("--mem", type=int, default=64, help="guest memory in MiB (default 64)")
    parser.add_argument("--backend", help="hypervisor backend (default: the launcher's)")
    parser.add_argument("--kernel", type=Path, metavar="FILE",
                        help="your kernel (vmlinux or bzImage) instead of the recipe kernel")
    parser.add_argument("--initrd", type=Path, metavar="FILE",
                        help="your initramfs instead of the harness's busybox one (scripted runs wait for "
                             f"its /init to print {READY_MARKER!r})")


def run(args) -> int:
    from launcher.hypervisor import default_backend
    problem = (args.kernel and kernel_problem(args.kernel, args.backend or default_backend(), "--kernel")) or \
        (args.initrd and initrd_problem(args.initrd, "--initrd"))
    if problem:
        print(f"lguest-harness demo: {problem}", file=sys.stderr)
        return 1
    try:
        kernel = args.kernel or ensure_kernel().vmlinux
    except KernelBuildError as err:
        print(f"lguest-harness demo: {err}", file=sys.stderr)
        return 1
    initrd = args.initrd or build_initramfs(cache_root() / "demo" / "initramfs.cpio")
    # A shell for a person: the console itself, not the command channel's agent.
    spec = GuestSpec(kernel=kernel, initrd=initrd, mem=args.mem, backend=args.backend, channel=False)
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
