"""Guests restored from snapshots: `lguest-harness snapshot` once, `lguest-harness restore` per guest.

    directory = take(spec, tmp / "snap", log_dir)        # boots spec's guest to its ready prompt
    guest = restore(directory, log_dir, name="fresh")     # a Guest whose shell answers at once

A restored guest's shell is already at its prompt (the snapshot is taken there), so there is
no ready marker to wait for: Guest.run works straight away; typed-ahead input is kept.
Snapshots are cached by spec under ~/.cache/lguest-harness/snapshots/ (cached()), keyed by
the kernel's and initramfs's contents and every option, like the kernel build.
"""
from __future__ import annotations

import datetime
import hashlib
import itertools
import json
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pexpect

from harness import warm_restore
from harness.console import Guest
from harness.launch import GuestSpec, _guest_bytes_unchanged
from harness.initramfs import AGENT_PARAM
from launcher.snapshot import MANIFEST, file_sha256

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lguest-harness" / "snapshots"
SNAPSHOT_TIMEOUT = 900.0
COLD_RESTORE_ENV = "LGUEST_HARNESS_COLD_RESTORE"
STALE_AFTER = 30 * 60.0     # s: a jump of this much costs a restored guest ~0.25 s on kvm_pvm
_serial = itertools.count(1)


class SnapshotFailed(AssertionError):
    pass


def snapshot_argv(spec: GuestSpec, directory: Path) -> list[str]:
    """spec's `lguest-harness boot` command line, as `lguest-harness snapshot DIR`."""
    argv = spec.argv()
    at = argv.index("boot")
    return [*argv[:at], "snapshot", str(directory), *argv[at + 1:]]


def take(spec: GuestSpec, directory: Path, log_dir: Path, timeout: float = SNAPSHOT_TIMEOUT) -> Path:
    """Boot spec's guest, pause it at its prompt, write the snapshot to directory."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"snapshot-{directory.name}.log"
    with open(log, "wb") as out:
        done = subprocess.run(snapshot_argv(spec, directory), stdin=subprocess.DEVNULL, stdout=out,
                              stderr=subprocess.STDOUT, timeout=timeout)
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise SnapshotFailed(f"lguest-harness snapshot exited {done.returncode}:\n{tail}")
    return directory


def spec_key(spec: GuestSpec) -> str:
    """The cache key: the kernel's and initramfs's contents, every other option, and the kind of
    KVM host (a snapshot restores only where it was taken: same host kind and TSC rate)."""
    from launcher.hostquirks import detect_host
    digest = hashlib.sha256(f"{detect_host().value}\0{_cpu_model()}\0".encode())
    for path in (spec.kernel, spec.initrd):
        digest.update(file_sha256(Path(path)).encode() if path else b"-")
    digest.update(repr((spec.mem, spec.cmdline, spec.backend, spec.block, spec.net, spec.rng,
                        spec.extra_args, spec.netns)).encode())
    return digest.hexdigest()[:16]


def _cpu_model() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "?"
    return next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")


def cached(spec: GuestSpec, log_dir: Path, cache: Path = CACHE, log=None) -> Path:
    """The snapshot of spec's guest, taken on first use and kept (an unfinished one is retaken,
    and so is a stale one where the guest's clock jumps by the snapshot's age: see stale())."""
    directory = cache / spec_key(spec)
    if (directory / "manifest.json").is_file():
        reason = stale(directory)
        if reason is None:
            return directory
        if log:
            log(f"snapshot {directory.name} retaken: {reason}")
    shutil.rmtree(directory, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    staging = cache / f".{directory.name}.{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    take(spec, staging, log_dir)
    try:
        staging.rename(directory)
    except OSError:             # another session got there first
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def stale(directory: Path, now: float | None = None) -> str | None:
    """Why a cached snapshot should be retaken on this host, or None.  Where a restored guest's
    clock jumps by the snapshot's age (hostquirks.guest_clock_jumps_on_restore), every restore
    pays for the jump, so a snapshot older than STALE_AFTER is not worth keeping."""
    from launcher.hostquirks import detect_host, guest_clock_jumps_on_restore
    if not guest_clock_jumps_on_restore(detect_host()):
        return None
    try:
        created = datetime.datetime.strptime(json.loads((directory / MANIFEST).read_text())["created"],
                                             "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except (OSError, ValueError, KeyError, TypeError):
        return "its manifest gives no creation time"
    age = (time.time() if now is None else now) - created
    if age <= STALE_AFTER:
        return None
    return (f"{age / 60:.0f} minutes old, and on this host a restored guest's clock jumps by the "
            f"snapshot's age (its kernel then catches up a second at a time)")


def restore_arguments(directory: Path, *, disks=(), timeout: float = 900.0, extra=()) -> list[str]:
    """`lguest-harness restore`'s arguments for directory."""
    return ["--verbose", "--timeout", f"{timeout:g}", *[f"--block={d}" for d in disks], *extra, str(directory)]


def restore_argv(directory: Path, *, disks=(), timeout: float = 900.0, netns: str | None = None,
                 extra=()) -> list[str]:
    """The restore as a command of its own (a new Python each time: see harness.warm_restore)."""
    import sys
    # `lguest-harness restore` itself, without the harness's other commands to import first.
    argv = [sys.executable, "-m", "launcher.cli_restore", *restore_arguments(directory, disks=disks,
                                                                               timeout=timeout, extra=extra)]
    return ["ip", "netns", "exec", netns, *argv] if netns else argv


def restore(directory: Path, log_dir: Path, name: str | None = None, *, disks=(), timeout: float = 900.0,
            netns: str | None = None, channel: bool | None = None, warm: bool | None = None) -> Guest:
    """A Guest running `lguest-harness restore directory` under pexpect.  Its commands go over the
    command channel when the snapshot's agent waits on hvc0 (channel=None: whenever it does),
    else they are typed on the serial console.  warm (default: unless $LGUEST_HARNESS_COLD_RESTORE
    is 1): forked by the session's restore server rather than started as a new process."""
    name = name or f"restored{next(_serial)}"
    log_dir.mkdir(parents=True, exist_ok=True)
    launcher_log = log_dir / f"{name}.launcher.log"
    launcher_log.unlink(missing_ok=True)       # a log left by an earlier run names an old pty
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if warm is None:
        warm = os.environ.get(COLD_RESTORE_ENV) != "1"
    if warm:
        child = warm_restore.spawn(restore_arguments(directory, disks=disks, timeout=timeout), log=launcher_log,
                                   netns=netns, encoding="utf-8", codec_errors="replace", env=env,
                                   dimensions=(50, 200))
    else:
        argv = restore_argv(directory, disks=disks, timeout=timeout, netns=netns)
        command = f"exec {shlex.join(argv)} 2>{shlex.quote(str(launcher_log))}"
        child = pexpect.spawn("/bin/sh", ["-c", command], encoding="utf-8", codec_errors="replace", env=env,
                              dimensions=(50, 200), preexec_fn=_guest_bytes_unchanged)
    guest = Guest(child, name=name, launcher_log=launcher_log)
    if channel is None:
        channel = _agent_on_hvc0(Path(directory))
    if channel:
        try:
            guest.open_restored_channel()
        except BaseException:
            guest.close()
            raise
    return guest


def _agent_on_hvc0(directory: Path) -> bool:
    """Whether the snapshot's guest was booted with its command-channel agent on hvc0."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return False        # the restore itself says what is wrong with the snapshot
    return f"{AGENT_PARAM}=hvc0" in manifest.get("kernel_args", ())
