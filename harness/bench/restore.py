"""`lguest-harness bench restore`: a guest restored from a snapshot vs. the same guest booted cold.

One run of this benchmark:
  1. cold boot: `lguest-harness snapshot` boots the recipe guest (64 MiB, the command
     channel's agent on hvc0) to its ready marker and prompt and writes the snapshot; launch -> ready is the cold-boot figure;
  2. restore -> first answered command: `lguest-harness restore` under pexpect, timed from the
     spawn to the answer of `echo $((6*7))` (Guest.run over the command channel, which the
     restored Guest reopens on the new hvc0 pty), median of max(--runs, 5);
     both as the harness restores (forked by its warm restore server, harness.warm_restore)
     and as the `lguest-harness restore` command (a new Python process each time);
  3. memory: one restored guest alone, then 4 restored from the same snapshot at once, each
     after answering a command: the PSS (proportional set size: shared pages split between
     their sharers) of the launcher processes plus the restore server that forked them, and
     of their guest-RAM mappings, from /proc/PID/smaps; RSS (VmRSS) beside them, which
     counts shared pages in full in each.
Beside each restore's wall time, the restored launcher's CPU up to the answer: user (our own
Python; a forked child counts from its fork) and system (the kernel, KVM_RUN included).
Targets (issue 12): restore -> answer <= 0.5 s; 4 guests <= 1.5x the memory of one.
"""
from __future__ import annotations

import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from harness.initramfs import build_initramfs
from harness.kernel import ensure_kernel
from harness.bench.runner import user_and_system_cpu
from harness.launch import GuestSpec
from harness import warm_restore
from harness.snapshots import restore, take

MEM_MB = 64
MIN_RUNS = 5
GUESTS = 4


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def memory_figures(pid: int, memory_file: Path) -> dict[str, float]:
    """MB: the process's RSS and PSS, and the PSS and private pages of its guest-RAM mapping."""
    figures = {"rss": 0.0, "pss": 0.0, "ram_pss": 0.0, "ram_private": 0.0}
    in_ram = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            in_ram = line.rstrip().endswith(str(memory_file))
            continue
        key, _, rest = line.partition(":")
        if key not in ("Rss", "Pss", "Private_Dirty", "Private_Clean"):
            continue
        mb = int(rest.split()[0]) / 1024
        if key == "Rss":
            figures["rss"] += mb
        elif key == "Pss":
            figures["pss"] += mb
            figures["ram_pss"] += mb if in_ram else 0
        elif in_ram:
            figures["ram_private"] += mb
    return figures


@dataclass(frozen=True)
class Timed:
    wall: float
    user: float         # the restored launcher's own Python
    system: float       # the kernel on its behalf, the guest's run included


def _median(runs: list[Timed], field: str) -> float:
    return statistics.median(getattr(run, field) for run in runs)


def _restore_and_answer(directory: Path, log_dir: Path, name: str, warm: bool = True):
    start = time.monotonic()
    guest = restore(directory, log_dir, name, warm=warm)
    result = guest.run("echo $((6*7))", timeout=300)
    elapsed = time.monotonic() - start
    if result.status != 0 or result.output.strip() != "42":
        raise RuntimeError(f"restored guest answered {result.output!r} (status {result.status})")
    return guest, Timed(elapsed, *user_and_system_cpu(guest.child.pid))


def _sum(figures: list[dict[str, float]]) -> dict[str, float]:
    return {key: sum(f[key] for f in figures) for key in figures[0]}


def _stop(guest) -> None:
    try:
        guest.poweroff(timeout=120)
    except AssertionError:
        pass
    guest.close()


def main(args) -> int:
    runs = max(args.runs, MIN_RUNS)
    kernel = ensure_kernel(log=_say)
    with tempfile.TemporaryDirectory(prefix="bench-restore-") as tmp:
        tmp = Path(tmp)
        spec = GuestSpec(kernel=Path(kernel.vmlinux), initrd=build_initramfs(tmp / "initramfs.cpio"), mem=MEM_MB,
                         timeout=3600)
        _say("bench restore: cold boot of the recipe guest, then the snapshot")
        start = time.monotonic()
        directory = take(spec, tmp / "snap", tmp / "logs")
        written = (tmp / "logs" / "snapshot-snap.log").read_text(errors="replace")
        cold = float(re.search(r"guest ready after ([\d.]+) s", written).group(1))
        _say(f"bench restore: cold boot ready in {cold:.1f} s, snapshot written {time.monotonic() - start:.1f} s "
             f"after launch")

        start = time.monotonic()
        warm_restore.server()       # once per session, like the snapshot: not part of a restore
        _say(f"bench restore: the restore server started in {time.monotonic() - start:.2f} s")
        times = {True: [], False: []}
        for i in range(runs):
            for warm in (True, False):
                guest, timed = _restore_and_answer(directory, tmp / "logs", f"timed{i}{'w' if warm else 'c'}", warm)
                times[warm].append(timed)
                _stop(guest)
            _say(f"bench restore: run {i + 1}: restore -> answer {times[True][-1].wall:.3f} s forked by the "
                 f"restore server, {times[False][-1].wall:.3f} s as a command")

        memory_file = directory / "memory.raw"
        server = warm_restore.server().process.pid     # shared by every restored guest: counted once
        alone, _ = _restore_and_answer(directory, tmp / "logs", "alone")
        one = _sum([memory_figures(server, memory_file), memory_figures(alone.child.pid, memory_file)])
        _stop(alone)
        crowd = [_restore_and_answer(directory, tmp / "logs", f"crowd{i}")[0] for i in range(GUESTS)]
        total = _sum([memory_figures(server, memory_file), *(memory_figures(g.child.pid, memory_file) for g in crowd)])
        for guest in crowd:
            _stop(guest)

    forked, command = times[True], times[False]
    walls, median = [t.wall for t in forked], _median(forked, "wall")
    print(f"restore -> first answered command: median {median:.3f} s of {runs} (min "
          f"{min(walls):.3f}, max {max(walls):.3f}; target <= 0.5 s) forked by the harness's restore server; "
          f"{_median(command, 'wall'):.3f} s as `lguest-harness restore` (a new Python each); cold boot -> "
          f"ready {cold:.1f} s in the same run ({cold / median:.0f}x)")
    for label, timed in (("forked", forked), ("as a command", command)):
        print(f"launcher CPU to the answer, {label}: user {_median(timed, 'user'):.2f} s (our Python), "
              f"system {_median(timed, 'system'):.2f} s (kernel, KVM_RUN included) [medians]")
    print(f"{'':<24}{'RSS MB':>9}{'PSS MB':>9}{'guest-RAM PSS MB':>18}{'guest-RAM private MB':>22}")
    print(f"{'1 restored guest':<24}{one['rss']:>9.1f}{one['pss']:>9.1f}{one['ram_pss']:>18.1f}"
          f"{one['ram_private']:>22.1f}")
    print(f"{f'{GUESTS} at once (sum)':<24}{total['rss']:>9.1f}{total['pss']:>9.1f}{total['ram_pss']:>18.1f}"
          f"{total['ram_private']:>22.1f}")
    print(f"{GUESTS} guests / 1: PSS {total['pss'] / one['pss']:.2f}x (target <= 1.5x), guest RAM "
          f"{total['ram_pss'] / one['ram_pss']:.2f}x; RSS {total['rss'] / one['rss']:.2f}x (counts shared pages "
          f"once per process)")
    return 0
