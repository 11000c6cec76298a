"""Snapshot and restore of the recipe guest on KVM: restored guests answer at once, are
independent of each other and of the snapshot, keep their virtio devices and timers, and a
bad snapshot is refused before any guest runs.

One cold boot (the module's snapshot) serves every test; each restored guest costs well under
a second of launcher time.  The guest has: hvc0 (virtio console, pty), /dev/vda (rw, random
data in its first MiB), virtio-rng, /dev/vdb (read-only).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.initramfs import build_initramfs
from harness.kernel import ensure_kernel
from harness.launch import GuestSpec
from harness.snapshots import restore, take
from launcher.hostquirks import detect_host, guest_clock_jumps_on_restore
from launcher.snapshot import copy_sparse

pytestmark = [pytest.mark.kvm, pytest.mark.slow]

MEM_MB = 64
RW_SIZE, RW_DATA = 8 << 20, 1 << 20


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture(scope="module")
def snap(tmp_path_factory):
    work = tmp_path_factory.mktemp("snapshot")
    rw = work / "rw.img"
    with open(rw, "wb") as f:
        f.write(os.urandom(RW_DATA))
        f.truncate(RW_SIZE)
    ro = work / "ro.img"
    ro.write_bytes(os.urandom(1 << 20))
    kernel = ensure_kernel(log=lambda msg: print(msg, file=sys.stderr, flush=True))
    # The boot's kernel messages are cleared before the ready marker, so a restored guest's dmesg
    # holds only what came after the snapshot point: the timers test judges the restore, not a boot
    # whose clocksource watchdog an emulated host (the nested stage's QEMU TCG) can trip on its own.
    initramfs = build_initramfs(work / "initramfs.cpio", commands=("dmesg -c >/dev/null",))
    spec = GuestSpec(kernel=Path(kernel.vmlinux), initrd=initramfs, mem=MEM_MB,
                     block=(str(rw),), rng=True, extra_args=(f"--block-ro={ro}",), timeout=1800)
    directory = take(spec, work / "snap", work / "logs")
    return directory, rw.read_bytes()[:512]


@pytest.fixture
def restored(snap, tmp_path):
    guests = []

    def make(name: str = "restored", **options):
        guest = restore(snap[0], tmp_path, name, **options)
        guests.append(guest)
        return guest
    yield make
    for guest in guests:
        if guest.child.isalive():
            try:
                guest.poweroff(timeout=120)
            except AssertionError:
                pass
        guest.close()


def check(guest, command: str, timeout: float = 300) -> str:
    result = guest.run(command, timeout=timeout)
    assert result.status == 0, f"`{command}` exited {result.status}: {result.output}"
    return result.output


def tree(directory: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_restored_guest_answers_and_its_virtio_devices_work(snap, restored):
    directory, first_sector = snap
    guest = restored("devices", channel=False)     # commands typed on the 8250: hvc0 is the test's own
    start = time.monotonic()
    assert check(guest, "echo $((6 * 7))").strip() == "42"
    assert time.monotonic() - start < 60
    rng = check(guest, "head -c 16 /dev/hwrng | od -An -tx1").split()
    assert len(rng) == 16 and len(set(rng)) > 1
    assert check(guest, "dd if=/dev/vda bs=512 count=1 iflag=direct 2>/dev/null | md5sum").split()[0] == md5(first_sector)
    assert check(guest, "cat /sys/block/vdb/ro").strip() == "1"
    # hvc0: the restored launcher's new pty carries what the guest writes to /dev/hvc0.
    pty = re.search(r"virtio console \(hvc0\) on (\S+)", guest.launcher_log).group(1)
    fd = os.open(pty, os.O_RDWR | os.O_NOCTTY)
    try:
        check(guest, "echo through-hvc0 > /dev/hvc0")
        seen, deadline = b"", time.monotonic() + 60
        while b"through-hvc0" not in seen and select.select([fd], [], [], max(0, deadline - time.monotonic()))[0]:
            seen += os.read(fd, 4096)
        assert b"through-hvc0" in seen
    finally:
        os.close(fd)


def test_two_guests_from_one_snapshot_are_independent(snap, restored):
    directory, first_sector = snap
    before = tree(directory)
    one, two = restored("one"), restored("two")
    check(one, "echo mine > /tmp/mark && echo written-by-one | dd of=/dev/vda conv=fsync 2>/dev/null")
    assert two.run("test -e /tmp/mark").status == 1
    read_sector = "dd if=/dev/vda bs=512 count=1 iflag=direct 2>/dev/null | md5sum"
    assert check(two, read_sector).split()[0] == md5(first_sector)
    assert check(one, read_sector).split()[0] != md5(first_sector)
    assert check(one, "cat /tmp/mark").strip() == "mine"
    assert tree(directory) == before                # neither guest wrote into the snapshot


def test_a_restored_guest_keeps_its_command_channel(restored):
    guest = restored("channel")
    assert guest.channel is not None                 # the agent that waited on hvc0 at the snapshot answers
    result = guest.run("echo out; echo err >&2; exit 3")
    assert (result.stdout, result.stderr, result.status) == ("out\n", "err\n", 3)


def test_timers_carry_on_after_restore(restored):
    guest = restored("timers")
    start = time.monotonic()
    out = check(guest, "read a x < /proc/uptime; sleep 1; read b x < /proc/uptime; echo UP $a $b")
    wall = time.monotonic() - start
    a, b = map(float, re.search(r"UP ([\d.]+) ([\d.]+)", out).groups())
    assert 1.0 <= b - a < 30 and wall >= 1.0        # sleep 1 took a second of guest time, not 0 or hours
    warnings = guest.run("dmesg | grep -i -e 'soft lockup' -e 'clocksource.*unstable' -e 'timekeeping watchdog'")
    assert warnings.status == 1, warnings.output


def uptime(guest) -> float:
    return float(check(guest, "cat /proc/uptime").split()[0])


CLOCK_GAP = 15.0


def test_a_restored_guests_clock_starts_where_the_host_quirks_say(restored):
    """Two guests restored CLOCK_GAP seconds apart: where the guest's TSC is the host's
    (kvm_pvm), the later one's clock is CLOCK_GAP further on; where KVM restores the TSC, both
    start from the snapshot's moment."""
    first = uptime(restored("early"))
    time.sleep(CLOCK_GAP)
    second = uptime(restored("late"))
    if guest_clock_jumps_on_restore(detect_host()):
        assert second - first > CLOCK_GAP / 2, (first, second)
    else:
        assert abs(second - first) < CLOCK_GAP / 2, (first, second)


def test_virtio_net_works_after_restore(tap_netns, tmp_path):
    """A guest snapshotted with a tap in a test-made namespace, restored there: the restored
    launcher opens a new tap with the same address, and traffic flows both ways."""
    kernel = ensure_kernel(log=lambda msg: None)
    spec = GuestSpec(kernel=Path(kernel.vmlinux), initrd=build_initramfs(tmp_path / "initramfs.cpio"), mem=MEM_MB,
                     cmdline=(tap_netns.guest_cmdline,), net=(tap_netns.tunnet,), netns=tap_netns.name,
                     timeout=1800)
    directory = take(spec, tmp_path / "snap", tmp_path / "logs")
    assert "net" in [d["kind"] for d in json.loads((directory / "manifest.json").read_text())["devices"]]
    guest = restore(directory, tmp_path / "logs", "net", netns=tap_netns.name)
    try:
        assert check(guest, "echo $((6 * 7))").strip() == "42"     # running: its tap is up
        ping = tap_netns.run("busybox", "ping", "-c", "3", "-W", "5", tap_netns.guest_ip,
                             capture_output=True, text=True)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        back = guest.run(f"ping -c 2 -W 5 {tap_netns.host_ip}", timeout=120)
        assert back.status == 0 and " 0% packet loss" in back.output, back.output
    finally:
        guest.poweroff(timeout=120)
        guest.close()


def _copy(directory: Path, dest: Path) -> Path:
    dest.mkdir()
    for path in directory.iterdir():
        copy_sparse(path, dest / path.name)
    return dest


def _edit_manifest(directory: Path, **changes) -> None:
    manifest = json.loads((directory / "manifest.json").read_text())
    for key, value in changes.items():
        if isinstance(value, dict):
            manifest[key] = {**manifest[key], **value}
        else:
            manifest[key] = value
    (directory / "manifest.json").write_text(json.dumps(manifest))


BAD = {
    "missing": (lambda d: shutil.rmtree(d), "no such directory"),
    "truncated memory": (lambda d: os.truncate(d / "memory.raw", 1 << 20), "truncated"),
    "corrupt state": (lambda d: (d / "state.json").write_bytes(b"{}"), "corrupt"),
    "corrupt manifest": (lambda d: (d / "manifest.json").write_text("{"), "corrupt"),
    "other version": (lambda d: _edit_manifest(d, launcher_version="9.9.9"), "taken by lguest-harness 9.9.9"),
    "kernel changed": (lambda d: _edit_manifest(d, kernel={"sha256": "0" * 64}), "changed since"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_snapshot_is_refused_before_any_guest_runs(case, snap, tmp_path):
    damage, message = BAD[case]
    bad = _copy(snap[0], tmp_path / "bad")
    damage(bad)
    done = subprocess.run([sys.executable, "-m", "harness.cli", "restore", str(bad)], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 1
    assert done.stdout == ""                        # no guest console output: nothing ran
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in done.stderr, done.stderr


# -- the plugin's fresh guests: each test gets its own, restored from one cached snapshot ----------
@pytest.mark.guest(fresh=True)
@pytest.mark.parametrize("turn", [1, 2])
def test_fresh_guests_share_nothing(guest, turn):
    assert guest.run("test -e /tmp/left-behind").status == 1, "a previous test's file leaked into this guest"
    assert guest.run(f"echo {turn} > /tmp/left-behind").ok
    assert guest.run("cat /tmp/left-behind").output.strip() == str(turn)


def test_guest_factory_restores_fresh_guests_side_by_side(guest_factory):
    first, second = guest_factory(fresh=True), guest_factory(fresh=True)
    assert first.run("echo first > /tmp/mine").ok
    assert second.run("test -e /tmp/mine").status == 1, "a file written in one restored guest reached the other"
    assert first.child.pid != second.child.pid and first.run("cat /tmp/mine").stdout == "first\n"
