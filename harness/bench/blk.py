"""`lguest-harness bench blk`: virtio-blk on virtio-mmio (KVM) against the host's own dd.

The guest reads and writes 16 MiB of /dev/vda with O_DIRECT (busybox dd, bs 1 MiB, so
every request reaches the device); the host runs GNU dd with the same flags on the same
file.  MB/s is 10^6 bytes per second.  Busybox dd prints no timing, so the guest's time is
/proc/uptime around the dd minus the same around a dd of count=0 (fork, exec and open cost
about a second in a kvm_pvm guest); the host's comes from GNU dd itself.  Launcher CPU per MiB moved is
measured around each guest dd from /proc: the vCPU thread (which on a kvm_pvm host also
carries the emulated guest kernel) and the device side (the queue service threads).
"""
from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from harness.bench.runner import MIB, boot_guest, host_dd, launcher_cpu, mbps, timed

DISK_MB = 64
MOVE_MB = 16


def main(args) -> int:
    runs = max(1, getattr(args, "runs", 3) or 1)
    with tempfile.TemporaryDirectory(prefix="bench-blk-") as tmp:
        tmp = Path(tmp)
        disk = tmp / "disk.img"
        with open(disk, "wb") as f:
            f.write(b"\xa5" * (DISK_MB * MIB))
        guest = boot_guest(tmp, block=[disk])
        try:
            pid = guest.child.pid
            rows = {"read": [], "write": []}
            commands = {
                "read": f"dd if=/dev/vda of=/dev/null bs=1M count={MOVE_MB} iflag=direct",
                "write": f"dd if=/dev/zero of=/dev/vda bs=1M count={MOVE_MB} oflag=direct conv=fsync",
            }
            nbytes = MOVE_MB * MIB
            for _ in range(runs):
                for kind, command in commands.items():
                    _, empty = timed(guest, command.replace(f"count={MOVE_MB}", "count=0") + " 2>/dev/null")
                    before = launcher_cpu(pid)
                    out, seconds = timed(guest, command + " 2>&1")
                    cpu = launcher_cpu(pid) - before
                    if f"{MOVE_MB}+0 records out" not in out:
                        raise RuntimeError(f"guest dd did not move {MOVE_MB} MiB: {out.strip()!r}")
                    rows[kind].append((mbps(nbytes, max(seconds - empty, 0.01)), cpu, nbytes))
            guest.poweroff(timeout=120)
        finally:
            guest.close()
        host = {
            "read": [host_dd([f"if={disk}", "of=/dev/null", "bs=1M", f"count={MOVE_MB}", "iflag=direct"])
                     for _ in range(runs)],
            "write": [host_dd(["if=/dev/zero", f"of={disk}", "bs=1M", f"count={MOVE_MB}", "oflag=direct",
                               "conv=fsync,notrunc"]) for _ in range(runs)],
        }
    print(f"blk: {MOVE_MB} MiB with O_DIRECT, bs 1 MiB, on /dev/vda (virtio-mmio, KVM) vs the host's dd on the "
          f"same file; median of {runs}")
    print(f"{'op':<6} {'guest MB/s':>11} {'host MB/s':>10} {'launcher CPU s/MiB':>19} {'(vCPU':>7} {'devices)':>9}")
    for kind in ("read", "write"):
        guest_rate = statistics.median(r for r, _, _ in rows[kind])
        host_rate = statistics.median(mbps(n, s) for n, s in host[kind])
        per_mib = [(c.total / (n / MIB), c.vcpu / (n / MIB), c.devices / (n / MIB)) for _, c, n in rows[kind]]
        total, vcpu, dev = (statistics.median(x[i] for x in per_mib) for i in range(3))
        print(f"{kind:<6} {guest_rate:>11.2f} {host_rate:>10.1f} {total:>19.4f} {vcpu:>7.4f} {dev:>9.4f}")
    return 0
