"""Shared by `bench blk` and `bench net`: a recipe guest with devices, and the launcher's CPU.

The launcher's CPU is read per thread from /proc/PID/task: the main thread is the vCPU
(its time includes the guest's, which a kvm_pvm host emulates inside KVM_RUN); every other
thread is the launcher's own device work (queue service threads, console input).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from harness.console import Guest
from harness.initramfs import build_initramfs
from harness.kernel import ensure_kernel
from harness.launch import GuestSpec, boot

MEM_MB = 128
READY_TIMEOUT = 400
MIB = 1 << 20
_CLK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Cpu:
    vcpu: float         # main thread: KVM_RUN (guest included) and the exit loop
    devices: float      # all other threads: device service threads and helpers

    @property
    def total(self) -> float:
        return self.vcpu + self.devices

    def __sub__(self, other: "Cpu") -> "Cpu":
        return Cpu(self.vcpu - other.vcpu, self.devices - other.devices)


def _times(path: str) -> tuple[int, int]:
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])       # utime, stime (fields 14 and 15), in ticks


def _ticks(path: str) -> int:
    return sum(_times(path))


def user_and_system_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds so far of process `pid`: in user space (for a launcher: its own Python)
    and in the kernel (syscalls, and KVM_RUN, where a kvm_pvm host emulates guest code)."""
    user, system = _times(f"/proc/{pid}/stat")
    return user / _CLK, system / _CLK


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def launcher_cpu(pid: int) -> Cpu:
    """CPU seconds so far of the launcher process `pid`, split vCPU thread / the rest.
    Threads that already ended are counted in the process's total, so the rest is derived.
    Under the qemu backend the launcher is our relay and QEMU its child: then "vCPU" is all
    of QEMU (its vCPU and device emulation) and the rest is the relay's own."""
    total = _ticks(f"/proc/{pid}/stat")
    vmm = sum(_ticks(f"/proc/{child}/stat") for child in _children(pid))
    if vmm:
        return Cpu(vmm / _CLK, total / _CLK)
    main = _ticks(f"/proc/{pid}/task/{pid}/stat")
    return Cpu(main / _CLK, (total - main) / _CLK)


def boot_guest(tmp: Path, *, block=(), net=(), cmdline=(), netns: str | None = None) -> Guest:
    kernel = ensure_kernel(log=lambda msg: print(msg, file=sys.stderr, flush=True))
    initrd = build_initramfs(tmp / "initramfs.cpio")
    spec = GuestSpec(kernel=Path(kernel.vmlinux), initrd=initrd, mem=MEM_MB,
                     cmdline=("console=ttyS0", "panic=-1", "quiet", *cmdline),
                     block=tuple(map(str, block)), net=tuple(net), netns=netns, timeout=3600)
    return boot(spec, tmp, name="bench", ready_timeout=READY_TIMEOUT)


def check(guest: Guest, command: str, timeout: float = 600) -> str:
    result = guest.run(command, timeout=timeout)
    if result.status != 0:
        raise RuntimeError(f"guest command `{command}` exited {result.status}: {result.output.strip()}")
    return result.output


_DD = re.compile(r"(\d+) bytes .*copied, ([\d.]+) s")


def dd_figures(output: str) -> tuple[int, float]:
    """(bytes, seconds) from dd's summary line (busybox and GNU)."""
    found = _DD.search(output)
    if not found:
        raise RuntimeError(f"no dd summary in: {output.strip()!r}")
    return int(found.group(1)), float(found.group(2))


def timed(guest: Guest, command: str, timeout: float = 600) -> tuple[str, float]:
    """Run command in the guest, timed by the guest's /proc/uptime around it (the shell's
    `read` is a builtin, so only the command's own fork, exec and work are inside)."""
    out = check(guest, f"read t0 x < /proc/uptime; {command}; read t1 x < /proc/uptime; echo T0 $t0 T1 $t1",
                timeout)
    found = re.search(r"T0 ([\d.]+) T1 ([\d.]+)", out)
    if not found:
        raise RuntimeError(f"no timing from the guest in: {out.strip()!r}")
    return out, float(found.group(2)) - float(found.group(1))


def host_dd(args: list[str]) -> tuple[int, float]:
    done = subprocess.run(["dd", *args], capture_output=True, text=True, check=True)
    return dd_figures(done.stderr)


def mbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6 if seconds > 0 else float("inf")
