"""`lguest-harness bench console`: the command channel (harness.channel) against the typed serial
console, on the kvm, qemu and fake backends, side by side.

Per backend, one booted guest: the overhead of a command that spawns nothing (`:`, a shell
builtin) over the channel and, for comparison, typed on the serial console (kvm, qemu: the 8250
shell beside the agent; fake: a second guest booted without the channel); a process spawn (`/bin/busybox
true` minus the builtin: the guest's own cost, the host's emulation of guest kernel code on
kvm_pvm); bulk stdout (`head -c N /dev/zero`); the guest kernel alone moving N MiB (`dd` from
/dev/zero to /dev/null: the ceiling of any path through the guest kernel); put and get of N MiB
of random bytes, checked byte for byte.  Each figure is the median of --runs, with the launcher's CPU over the same interval
(vCPU thread, which on kvm_pvm includes the emulated guest kernel, and the device threads; under
qemu: all of QEMU, and our relay).
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness.backends import lacks
from harness.bench.runner import MIB, Cpu, launcher_cpu

BACKENDS = ("fake", "kvm", "qemu")
DEFAULT_MIB = 16


def _measure(guest, fn) -> tuple[float, Cpu]:
    pid = guest.child.pid
    before, start = launcher_cpu(pid), time.monotonic()
    fn()
    return time.monotonic() - start, launcher_cpu(pid) - before


def _median(samples: list[tuple[float, Cpu]]) -> tuple[float, Cpu]:
    wall = statistics.median(s for s, _ in samples)
    return wall, Cpu(statistics.median(c.vcpu for _, c in samples), statistics.median(c.devices for _, c in samples))


def _spec(backend: str, tmp: Path, channel: bool = True):
    from harness.initramfs import build_initramfs
    from harness.kernel import ensure_kernel
    from harness.launch import GuestSpec
    kernel = Path(ensure_kernel(log=lambda msg: print(msg, file=sys.stderr, flush=True)).vmlinux)
    initrd = build_initramfs(tmp / "initramfs.cpio")
    return GuestSpec(kernel=kernel, initrd=initrd, mem=128, backend=backend, timeout=7200, channel=channel)


def _boot(backend: str, tmp: Path, channel: bool = True):
    from harness.launch import boot
    return boot(_spec(backend, tmp, channel), tmp, name=f"bench-{backend}{'' if channel else '-serial'}",
                ready_timeout=600)


def _serial_run(guest, command: str) -> None:
    """Guest.run on the typed console even when the guest has the channel."""
    channel, guest.channel = guest.channel, None
    try:
        if channel is not None:
            guest.sendline("")                 # the 8250 shell may still be printing its banner
            guest.expect(r"# ", 300)
        assert guest.run(command, timeout=300).status == 0
    finally:
        guest.channel = channel


def bench_backend(backend: str, runs: int, mib: int, tmp: Path) -> dict:
    rows: dict[str, tuple] = {}
    guest = _boot(backend, tmp)
    try:
        run = guest.run
        run(":")
        rows["builtin `:` (channel)"] = (_median([_measure(guest, lambda: run(":")) for _ in range(max(runs, 5))]), None)
        spawn = _median([_measure(guest, lambda: run("/bin/busybox true", timeout=300)) for _ in range(runs)])
        rows["process spawn (busybox true)"] = (spawn, None)
        size = mib * MIB
        rows[f"stdout {mib} MiB"] = (_median([_measure(guest, lambda: _check_len(run(f"head -c {size} /dev/zero",
                                                                                     timeout=7200), size))
                                              for _ in range(runs)]), size)
        # The guest's own ceiling: the kernel alone moving bytes, no channel (on kvm_pvm its code
        # is emulated, and every copy of the channel's data path pays that rate at least once).
        if backend != "fake":       # the fake guest has no kernel (and its shell no dd)
            rows[f"guest-only dd {mib} MiB"] = (_median([_measure(guest, lambda: _check_ok(run(
                f"dd if=/dev/zero of=/dev/null bs=64k count={size // 65536}", timeout=7200))) for _ in range(runs)]), size)
        data = tmp / "data.bin"
        data.write_bytes(os.urandom(size))
        back = tmp / "back.bin"
        rows[f"put {mib} MiB"] = (_median([_measure(guest, lambda: guest.put(data, "/tmp/data.bin", timeout=7200))
                                           for _ in range(runs)]), size)
        rows[f"get {mib} MiB"] = (_median([_measure(guest, lambda: guest.get("/tmp/data.bin", back, timeout=7200))
                                           for _ in range(runs)]), size)
        if back.read_bytes() != data.read_bytes():
            raise RuntimeError("get did not bring back the bytes put")
        run("rm -f /tmp/data.bin")
        serial_beside = _spec(backend, tmp).agent_console() == "hvc0"     # the 8250 shell is free
        if serial_beside:
            rows["builtin `:` (serial, typed)"] = (_median([_measure(guest, lambda: _serial_run(guest, ":"))
                                                           for _ in range(runs)]), None)
        guest.poweroff(timeout=300)
    finally:
        guest.close()
    if not serial_beside:       # the agent is on the console itself: a second guest without it
        serial = _boot(backend, tmp, channel=False)
        try:
            rows["builtin `:` (serial, typed)"] = (_median([_measure(serial, lambda: serial.run(":"))
                                                           for _ in range(max(runs, 5))]), None)
            serial.poweroff(timeout=60)
        finally:
            serial.close()
    return rows


def _check_ok(result) -> None:
    if result.status != 0:
        raise RuntimeError(f"status {result.status}: {result.stderr[-500:]}")


def _check_len(result, size: int) -> None:
    if result.status != 0 or len(result.stdout_bytes) != size:
        raise RuntimeError(f"expected {size} bytes of stdout, got {len(result.stdout_bytes)} (status {result.status})")


def main(args) -> int:
    runs = max(1, getattr(args, "runs", 3) or 1)
    mib = getattr(args, "mib", None) or DEFAULT_MIB
    backends = [b for b in BACKENDS if b in (getattr(args, "backend", None) or BACKENDS)]
    print(f"console: the command channel (virtio console) vs the typed serial console; median of {runs}; "
          f"launcher CPU = vCPU thread + device threads over the same interval")
    print(f"{'backend':<8} {'what':<30} {'wall s':>9} {'MB/s':>8} {'CPU s':>8} {'(vCPU':>8} {'devices)':>9}")
    for backend in backends:
        missing = lacks(backend)
        if missing:
            print(f"{backend:<8} skipped: no {missing}")
            continue
        with tempfile.TemporaryDirectory(prefix=f"bench-console-{backend}-") as tmp:
            rows = bench_backend(backend, runs, mib, Path(tmp))
        for what, ((wall, cpu), size) in rows.items():
            rate = f"{size / wall / 1e6:.3f}" if size else "-"
            print(f"{backend:<8} {what:<30} {wall:>9.3f} {rate:>8} {cpu.total:>8.3f} {cpu.vcpu:>8.3f} {cpu.devices:>9.3f}",
                  flush=True)
    return 0
