"""Snapshot directories: what write_snapshot puts there, and every way open_snapshot and the
`restore` command refuse a bad one (one line, exit status 1, the directory untouched)."""
import hashlib
import json
import os
import types
from pathlib import Path

import pytest

from launcher import cli_restore
from launcher.config import LaunchConfig
from launcher.devspec import BlockSpec, RngSpec
from launcher.hypervisor.kvm_virtio import KvmVirtioMmio
from launcher.memory import GuestMemory
from launcher.snapshot import (
    FORMAT_VERSION, DiskOverride, SnapshotError, copy_sparse, open_snapshot, write_snapshot,
)

MEM_MB = 2


def fake_vm(tmp_path: Path, devices=()):
    """What write_snapshot reads from a paused Launcher, with canned backend and bus state."""
    kernel = tmp_path / "vmlinux"
    if not kernel.exists():
        kernel.write_bytes(b"\x7fELF kernel bytes" * 100)
    memory = GuestMemory(MEM_MB << 20)
    memory.write(0x1000, b"guest page")
    config = LaunchConfig(mem_mb=MEM_MB, kernel=kernel, kernel_args=("quiet",), devices=tuple(devices),
                          backend="kvm", hvc="none")
    return types.SimpleNamespace(
        config=config, memory=memory, cmdline="quiet console=ttyS0", bus_class=KvmVirtioMmio,
        backend=types.SimpleNamespace(save_state=lambda: {"vcpu": {"regs": "AAAA"}}),
        bus=types.SimpleNamespace(save_state=lambda: [{"device": "canned"}] * len(devices)))


@pytest.fixture
def snap(tmp_path):
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.write(b"D" * 4096)
        f.truncate(1 << 20)
    vm = fake_vm(tmp_path, (BlockSpec(str(disk)), RngSpec()))
    write_snapshot(tmp_path / "snap", vm)
    vm.memory.close()
    return tmp_path / "snap"


def tree(directory: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_written_snapshot_has_manifest_memory_state_and_disk(snap):
    manifest = json.loads((snap / "manifest.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION and manifest["mem_mb"] == MEM_MB
    assert manifest["cmdline"] == "quiet console=ttyS0"
    assert [d["kind"] for d in manifest["devices"]] == ["block", "rng"]
    memory = snap / "memory.raw"
    assert memory.stat().st_size == MEM_MB << 20
    assert memory.stat().st_blocks * 512 < MEM_MB << 20       # sparse: only the written page is data
    assert (snap / "disk0.img").read_bytes() == (snap.parent / "disk.img").read_bytes()
    image = open_snapshot(snap)
    assert image.state["backend"] == {"vcpu": {"regs": "AAAA"}}


def test_restored_config_copies_writable_disks_and_keeps_the_snapshot_unchanged(snap):
    before = tree(snap)
    image = open_snapshot(snap)
    config = image.config(timeout=5)
    block, rng = config.devices
    assert isinstance(rng, RngSpec) and config.timeout == 5 and config.kernel_args == ("quiet",)
    assert Path(block.path).parent == image.workdir and not block.read_only
    with open(block.path, "r+b") as f:
        f.write(b"written by one restored guest")
    assert tree(snap) == before
    image.close()
    assert not Path(block.path).exists()


def test_disk_overrides_must_match_size_and_writability(snap, tmp_path):
    image = open_snapshot(snap)
    right = tmp_path / "right.img"
    right.write_bytes(bytes(1 << 20))
    assert image.config(disks=(DiskOverride(str(right)),)).devices[0].path == str(right)
    small = tmp_path / "small.img"
    small.write_bytes(bytes(4096))
    with pytest.raises(SnapshotError, match="same size"):
        image.config(disks=(DiskOverride(str(small)),))
    with pytest.raises(SnapshotError, match="use --block"):
        image.config(disks=(DiskOverride(str(right), read_only=True),))
    with pytest.raises(SnapshotError, match="2 --block flags"):
        image.config(disks=(DiskOverride(str(right)), DiskOverride(str(right))))


def test_copy_sparse_keeps_holes(tmp_path):
    src = tmp_path / "src"
    with open(src, "wb") as f:
        f.seek(8 << 20)
        f.write(b"tail")
    copy_sparse(src, tmp_path / "dst")
    assert (tmp_path / "dst").read_bytes() == src.read_bytes()
    assert (tmp_path / "dst").stat().st_blocks * 512 < 1 << 20


def _corrupt_manifest(snap, **changes):
    manifest = json.loads((snap / "manifest.json").read_text())
    manifest.update(changes)
    (snap / "manifest.json").write_text(json.dumps(manifest))


BAD = {
    "missing": (lambda snap: os.rename(snap, snap.with_name("elsewhere")), "no such directory"),
    "unfinished": (lambda snap: (snap / "manifest.json").unlink(), "no manifest.json"),
    "corrupt manifest": (lambda snap: (snap / "manifest.json").write_text("{ not json"), "manifest.json is corrupt"),
    "other version": (lambda snap: _corrupt_manifest(snap, launcher_version="0.0.1"), "taken by lguest-harness 0.0.1"),
    "other format": (lambda snap: _corrupt_manifest(snap, format_version=99), "format 99"),
    "manifest lacks a key": (lambda snap: _corrupt_manifest(snap, memory={"file": "memory.raw"}), "corrupt"),
    "escaping file name": (lambda snap: _corrupt_manifest(snap, state={"file": "../x", "size": 1, "sha256": ""}),
                           "not a plain name"),
    "kernel changed": (lambda snap: (snap.parent / "vmlinux").write_bytes(b"another kernel"), "changed since"),
    "kernel gone": (lambda snap: (snap.parent / "vmlinux").unlink(), "is gone"),
    "memory truncated": (lambda snap: os.truncate(snap / "memory.raw", 4096), "truncated"),
    "memory missing": (lambda snap: (snap / "memory.raw").unlink(), "memory file memory.raw is missing"),
    "state corrupt": (lambda snap: (snap / "state.json").write_text('{"backend": 1, "devices": 2}'), "corrupt"),
    "disk truncated": (lambda snap: os.truncate(snap / "disk0.img", 512), "disk image file disk0.img"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_snapshot_is_one_line_and_exit_1(case, snap, capsys):
    damage, message = BAD[case]
    damage(snap)
    before = tree(snap) if snap.exists() else None
    with pytest.raises(SnapshotError, match=message):
        open_snapshot(snap)
    assert cli_restore.main([str(snap)]) == 1
    err = capsys.readouterr().err
    assert message.split()[0] in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("lguest-harness restore: snapshot ")
    if before is not None:
        assert tree(snap) == before          # refusing never writes into the directory


def test_snapshot_refuses_a_directory_that_is_not_empty(tmp_path):
    (tmp_path / "snap").mkdir()
    (tmp_path / "snap" / "keep.txt").write_text("mine")
    vm = fake_vm(tmp_path)
    with pytest.raises(SnapshotError, match="not an empty directory"):
        write_snapshot(tmp_path / "snap", vm)
    vm.memory.close()
    assert (tmp_path / "snap" / "keep.txt").read_text() == "mine"


def test_memory_file_maps_copy_on_write_within_guard_pages(tmp_path):
    with GuestMemory(1 << 20) as mem:
        mem.write(0x2000, b"saved")
        mem.save_sparse(tmp_path / "mem")
    with GuestMemory.from_file(tmp_path / "mem", 1 << 20) as mem:
        assert mem.read(0x2000, 5) == b"saved"
        mem.write(0x2000, b"guest")
        assert mem.read(0x2000, 5) == b"guest"
        with pytest.raises(Exception, match="outside guest memory"):
            mem.read((1 << 20) - 2, 4)
    assert (tmp_path / "mem").read_bytes()[0x2000:0x2005] == b"saved"
    with pytest.raises(Exception, match="fewer than"):
        GuestMemory.from_file(tmp_path / "mem", 2 << 20)


def test_snapshot_command_defaults_are_the_harness_initramfs_marker_and_prompt():
    from harness.initramfs import PROMPT, READY_MARKER
    from launcher import cli_snapshot
    assert cli_snapshot.DEFAULT_READY_MARKER == READY_MARKER and cli_snapshot.DEFAULT_PROMPT == PROMPT


def test_snapshot_of_a_multi_vcpu_guest_is_refused_before_it_boots(tmp_path, capsys):
    from launcher import cli_snapshot
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"never read")
    assert cli_snapshot.main([str(tmp_path / "snap"), "--cpus=2", "4", str(kernel)]) == 1
    err = capsys.readouterr().err
    assert "--cpus=2: snapshots hold one vCPU" in err and err.count("\n") == 1, err


def test_snapshot_over_a_transport_that_cannot_save_its_devices_is_refused_before_it_boots(tmp_path, capsys):
    from launcher import cli_snapshot
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"never read")
    assert cli_snapshot.main([str(tmp_path / "snap"), "--transport=pci", "4", str(kernel)]) == 1
    err = capsys.readouterr().err
    assert "KvmVirtioPci cannot save its devices' state yet" in err and "--transport=mmio" in err, err
    assert err.count("\n") == 1 and not (tmp_path / "snap").exists()
