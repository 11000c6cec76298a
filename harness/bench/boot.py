"""`lguest-harness bench boot`: the recipe guest from launch to its ready marker, per backend.

Ours: `lguest-harness boot` on /dev/kvm (--backend kvm) and on QEMU (--backend qemu: our relay
with qemu-system-x86_64 as the VMM, TCG here), measured from outside (launch -> marker on the
console pipe, CPU and peak RSS from wait4) and from inside (--stats-json: seconds and
CPU inside KVM_RUN when the marker appeared; kvm only).  Beside them, in the same run,
qemu-system-x86_64 -accel tcg boots the same bzImage and initramfs to the same marker
(qemu-system-x86 is installed with apt here if missing, never in CI setup).

On a kvm_pvm host guest kernel code is emulated inside KVM_RUN, so the wall time is
the host's; our share is launch->ready over time-in-KVM_RUN (target <= 1.2) and the
launcher's own CPU, i.e. total CPU minus the CPU spent inside KVM_RUN (target <= 1 s).
"""
from __future__ import annotations

import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from harness.backends import lacks
from harness.initramfs import READY_MARKER, build_initramfs
from harness.kernel import ensure_kernel

MEM_MB = 96
READY_TIMEOUT = 300.0
EXIT_TIMEOUT = 60.0
GUEST_ARGS = ("panic=-1", "quiet")


@dataclass
class Boot:
    ready: float            # launch -> ready marker, seconds
    cpu_total: float        # user + sys of the whole process, to exit
    cpu_user: float
    rss_mb: float
    in_run_at_ready: float | None = None
    cpu_in_run: float | None = None

    @property
    def own_cpu(self) -> float | None:
        return None if self.cpu_in_run is None else self.cpu_total - self.cpu_in_run


def _wait_for(proc: subprocess.Popen, marker: bytes, timeout: float) -> bytes:
    seen, deadline = b"", time.monotonic() + timeout
    while marker not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
            raise TimeoutError(f"no {marker.decode()!r} within {timeout:g} s; tail: {seen[-500:]!r}")
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            raise RuntimeError(f"exited before {marker.decode()!r}; tail: {seen[-500:]!r}")
        seen += chunk
    return seen


def _drain_and_reap(proc: subprocess.Popen, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and select.select([proc.stdout], [], [], 1.0)[0]:
        if not os.read(proc.stdout.fileno(), 65536):
            break
    if time.monotonic() >= deadline:
        proc.kill()  # never poll() first: it would reap the child and lose its rusage
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage


def boot_ours(kernel, initrd: Path, tmp: Path, backend: str = "kvm") -> Boot:
    stats = tmp / "stats.json"
    argv = [sys.executable, "-m", "harness.cli", "boot", f"--backend={backend}", f"--timeout={READY_TIMEOUT + EXIT_TIMEOUT}",
            f"--stats-json={stats}", f"--ready-marker={READY_MARKER}", f"--initrd={initrd}",
            str(MEM_MB), str(kernel.vmlinux), *GUEST_ARGS]
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _wait_for(proc, READY_MARKER.encode(), READY_TIMEOUT)
    ready = time.monotonic() - start
    proc.stdin.write(b"poweroff -f\n")
    proc.stdin.flush()
    usage = _drain_and_reap(proc, EXIT_TIMEOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"lguest-harness boot exited {proc.returncode}")
    figures = json.loads(stats.read_text())
    return Boot(ready, usage.ru_utime + usage.ru_stime, usage.ru_utime, usage.ru_maxrss / 1024,
                figures["ready_seconds_in_run"], figures["cpu_in_run"])


def ensure_qemu(log=print) -> str | None:
    path = shutil.which("qemu-system-x86_64")
    if path:
        return path
    log("bench boot: installing qemu-system-x86 for the comparison")
    result = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "qemu-system-x86"],
                            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, capture_output=True, text=True)
    if result.returncode != 0:
        log(f"bench boot: cannot install qemu-system-x86: {result.stderr.strip()[-300:]}")
        return None
    return shutil.which("qemu-system-x86_64")


def boot_qemu(qemu: str, kernel, initrd: Path) -> Boot:
    argv = [qemu, "-accel", "tcg", "-m", str(MEM_MB), "-kernel", str(kernel.bzimage), "-initrd", str(initrd),
            "-append", "console=ttyS0 " + " ".join(GUEST_ARGS), "-nodefaults", "-display", "none",
            "-serial", "stdio", "-no-reboot"]
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_for(proc, READY_MARKER.encode(), READY_TIMEOUT)
        ready = time.monotonic() - start
    finally:
        proc.kill()  # with no ACPI, poweroff ends in hlt and qemu would idle on
    usage = _drain_and_reap(proc, EXIT_TIMEOUT)
    return Boot(ready, usage.ru_utime + usage.ru_stime, usage.ru_utime, usage.ru_maxrss / 1024)


def _fmt(value, spec=".2f") -> str:
    return "-" if value is None else format(value, spec)


def report(rows: dict[str, list[Boot]]) -> None:
    """One line per run, then each backend's medians side by side (CPU and RSS: the whole
    process tree, QEMU included under the qemu backend)."""
    print(f"{'run':<14}{'ready s':>9}{'in KVM_RUN s':>14}{'ratio':>7}{'CPU s':>8}{'in-run CPU':>11}"
          f"{'own CPU s':>10}{'peak RSS MB':>12}")
    for label, boots in rows.items():
        for i, b in enumerate(boots, 1):
            ratio = b.ready / b.in_run_at_ready if b.in_run_at_ready else None
            print(f"{label + ' ' + str(i):<14}{b.ready:>9.2f}{_fmt(b.in_run_at_ready):>14}{_fmt(ratio, '.3f'):>7}"
                  f"{b.cpu_total:>8.2f}{_fmt(b.cpu_in_run):>11}{_fmt(b.own_cpu):>10}{b.rss_mb:>12.1f}")
    med = statistics.median
    print()
    for label, boots in rows.items():
        if not boots:
            continue
        line = (f"{label}: launch->ready {med(b.ready for b in boots):.2f} s (median of {len(boots)}), "
                f"CPU {med(b.cpu_total for b in boots):.2f} s, peak RSS {med(b.rss_mb for b in boots):.0f} MB")
        if all(b.in_run_at_ready for b in boots):
            ready, in_run = med(b.ready for b in boots), med(b.in_run_at_ready for b in boots)
            line += (f"; {in_run:.2f} s inside KVM_RUN (ratio {ready / in_run:.3f}, target <= 1.2), "
                     f"launcher's own CPU {med(b.own_cpu for b in boots):.2f} s per boot (target <= 1)")
        print(line)


def main(args) -> int:
    kernel = ensure_kernel(log=lambda msg: print(msg, file=sys.stderr, flush=True))
    with tempfile.TemporaryDirectory(prefix="bench-boot-") as tmp:
        tmp = Path(tmp)
        initrd = build_initramfs(tmp / "initramfs.cpio")
        rows: dict[str, list[Boot]] = {}
        qemu_path = ensure_qemu(lambda msg: print(msg, file=sys.stderr))
        for backend in getattr(args, "backend", None) or ("kvm", "qemu"):
            if lacks(backend):
                print(f"{backend}: skipped, no {lacks(backend)}", file=sys.stderr)
                continue
            boots = rows.setdefault(f"ours-{backend}", [])
            for i in range(args.runs):
                boots.append(boot_ours(kernel, initrd, tmp, backend))
                print(f"{backend} run {i + 1}: ready in {boots[-1].ready:.2f} s", file=sys.stderr, flush=True)
        if qemu_path:
            rows["bare qemu-tcg"] = [boot_qemu(qemu_path, kernel, initrd) for _ in range(args.runs)]
    report(rows)
    return 0
