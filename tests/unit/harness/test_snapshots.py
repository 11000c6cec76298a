"""harness.snapshots: the snapshot command line is the boot one, and the cache key follows contents."""
from pathlib import Path

from harness.launch import GuestSpec
from harness.snapshots import restore_argv, snapshot_argv, spec_key


def spec(tmp_path, **kw) -> GuestSpec:
    kernel, initrd = tmp_path / "vmlinux", tmp_path / "initrd"
    for path in (kernel, initrd):
        if not path.exists():
            path.write_bytes(path.name.encode())
    return GuestSpec(kernel=kernel, initrd=initrd, **kw)


def test_snapshot_argv_is_boot_with_the_directory(tmp_path):
    s = spec(tmp_path, rng=True, netns="ns1")
    boot, snap = s.argv(), snapshot_argv(s, Path("/snap"))
    assert snap[snap.index("snapshot") + 1] == "/snap"
    assert [a for a in snap if a not in ("snapshot", "/snap")] == [a for a in boot if a != "boot"]
    assert snap[:4] == ["ip", "netns", "exec", "ns1"]


def test_cache_key_follows_file_contents_and_options(tmp_path):
    s = spec(tmp_path)
    key = spec_key(s)
    assert spec_key(spec(tmp_path)) == key
    assert spec_key(spec(tmp_path, mem=128)) != key
    (tmp_path / "initrd").write_bytes(b"another image")
    assert spec_key(s) != key


def test_restore_argv_passes_disks_in_order():
    argv = restore_argv(Path("/snap"), disks=("a.img", "b.img"), timeout=30)
    assert argv[-3:] == ["--block=a.img", "--block=b.img", "/snap"] and "launcher.cli_restore" in argv
