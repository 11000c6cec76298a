"""`lguest-harness bench fs`: virtio-fs (virtiofsd over vhost-user) against the host itself,
and `run -- true` against a plain boot of the same kernel.

1. A recipe guest with a host directory shared at /mnt/bench: the guest `cat`s a 64 MiB file (--mib)
   to /dev/null and `find`s a tree of 10,000 small files (timed by the guest's /proc/uptime,
   minus the same around `true`); the host does the same with its own cat and find (warm page
   cache: the guest's first read is what virtiofsd serves from it too).  CPU: the launcher's
   vCPU and other threads, and virtiofsd's (every process below the launcher).
2. `lguest-harness run -- true` end to end, beside `lguest-harness boot` of the same kernel
   with an /init that powers off at once: wall time and the CPU of the process tree.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.bench.runner import MIB, READY_TIMEOUT, check, launcher_cpu, timed
from harness.initramfs import build_initramfs, share_mounts
from harness.kernel import ensure_kernel
from harness.launch import GuestSpec, boot

BIG_MB = 64
SMALL_FILES = 10_000
_CLK = os.sysconf("SC_CLK_TCK")


def _tree(root: Path, big_mb: int) -> None:
    with open(root / "big", "wb") as f:
        f.write(os.urandom(MIB) * big_mb)
    for d in range(100):
        sub = root / "tree" / f"d{d:02}"
        sub.mkdir(parents=True)
        for n in range(SMALL_FILES // 100):
            (sub / f"f{n:03}").write_bytes(b"x" * 100)


def descendants_cpu(pid: int) -> float:
    """CPU seconds of every live process below pid (virtiofsd and its sandboxed child)."""
    children: dict[int, list[int]] = {}
    stats: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
        stats[int(entry)] = (int(fields[11]), int(fields[12]))
    total, todo = 0, list(children.get(pid, []))
    while todo:
        p = todo.pop()
        total += sum(stats.get(p, (0, 0)))
        todo += children.get(p, [])
    return total / _CLK


def _host_seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def _guest_fs(tmp: Path, runs: int, big_mb: int) -> None:
    share = tmp / "share"
    share.mkdir()
    _tree(share, big_mb)
    kernel = ensure_kernel(log=lambda msg: print(msg, file=sys.stderr, flush=True))
    spec_share = f"{share}:bench:ro"
    initrd = build_initramfs(tmp / "initramfs.cpio", commands=tuple(share_mounts([spec_share])))
    spec = GuestSpec(kernel=Path(kernel.vmlinux), initrd=initrd, mem=256, share=(spec_share,),
                     cmdline=("console=ttyS0", "panic=-1", "quiet"), timeout=7200)
    guest = boot(spec, tmp, name="bench-fs", ready_timeout=READY_TIMEOUT)
    rows = {}
    try:
        pid = guest.child.pid
        commands = {f"cat {big_mb} MiB": "cat /mnt/bench/big > /dev/null",
                    f"find {SMALL_FILES} files": "find /mnt/bench/tree > /dev/null"}
        for name, command in commands.items():
            rows[name] = []
            for run in range(runs):
                if run:     # every run starts cold in the guest (virtiofsd's host cache stays warm)
                    check(guest, "echo 3 > /proc/sys/vm/drop_caches")
                _, empty = timed(guest, "true")
                before, fsd_before = launcher_cpu(pid), descendants_cpu(pid)
                _, seconds = timed(guest, command, timeout=3600)
                cpu, fsd = launcher_cpu(pid) - before, descendants_cpu(pid) - fsd_before
                rows[name].append((max(seconds - empty, 0.001), cpu, fsd))
        guest.poweroff(timeout=120)
    finally:
        guest.close()
    host = {f"cat {big_mb} MiB": ["cat", str(share / "big")], f"find {SMALL_FILES} files": ["find", str(share / "tree")]}
    print(f"fs: a host directory over virtio-fs (virtiofsd, cache=auto, read-only) in a recipe guest, "
          f"beside the host; median of {runs}")
    print(f"{'what':<18} {'guest s':>9} {'host s':>8} {'vCPU s':>8} {'launcher threads s':>19} {'virtiofsd s':>12}")
    for name, values in rows.items():
        guest_s = statistics.median(v[0] for v in values)
        vcpu = statistics.median(v[1].vcpu for v in values)
        devices = statistics.median(v[1].devices for v in values)
        fsd = statistics.median(v[2] for v in values)
        host_s = statistics.median(_host_seconds(host[name]) for _ in range(runs))
        print(f"{name:<18} {guest_s:>9.2f} {host_s:>8.3f} {vcpu:>8.2f} {devices:>19.3f} {fsd:>12.3f}")
    big = big_mb * MIB / 1e6
    print(f"(cat: guest {big / statistics.median(v[0] for v in rows[f'cat {big_mb} MiB']):.2f} MB/s)")


def _timed_process(argv: list[str], stdin=subprocess.DEVNULL) -> tuple[float, float, int]:
    start = time.perf_counter()
    process = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    stderr = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {process.returncode}: {stderr.strip()[-400:]}")
    return wall, usage.ru_utime + usage.ru_stime, process.returncode


def _run_vs_boot(tmp: Path, runs: int) -> None:
    kernel = ensure_kernel(log=lambda msg: print(msg, file=sys.stderr, flush=True)).vmlinux
    off = build_initramfs(tmp / "off.cpio", init_script="#!/bin/sh\n/bin/busybox poweroff -f\n", agent=False)
    me = [sys.executable, "-m", "harness.cli"]
    cases = {"run -- true": [*me, "run", "--kernel", str(kernel), "--", "true"],
             "boot, /init powers off": [*me, "boot", "--initrd", str(off), "64", str(kernel),
                                        "console=ttyS0", "panic=-1", "quiet"]}
    print(f"run: `lguest-harness run -- true` end to end beside a boot of the same kernel to power-off; "
          f"median of {runs} (CPU: the whole process tree, guest emulation included)")
    print(f"{'what':<24} {'wall s':>8} {'CPU s':>8}")
    for name, argv in cases.items():
        figures = [_timed_process(argv) for _ in range(runs)]
        print(f"{name:<24} {statistics.median(f[0] for f in figures):>8.2f} "
              f"{statistics.median(f[1] for f in figures):>8.2f}")


def main(args) -> int:
    runs = max(1, getattr(args, "runs", 1) or 1)
    with tempfile.TemporaryDirectory(prefix="bench-fs-") as tmp:
        _guest_fs(Path(tmp), runs, getattr(args, "mib", None) or BIG_MB)
        _run_vs_boot(Path(tmp), runs)
    return 0
