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


def _manifest(directory: Path, created: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "manifest.json").write_text(f'{{"created": "{created}"}}')
    return directory


def test_a_snapshot_is_stale_by_age_only_where_the_guest_clock_jumps(tmp_path, monkeypatch):
    import harness.snapshots as snapshots
    from launcher import hostquirks
    snap = _manifest(tmp_path / "s", "2026-12-01T07:00:00+0000")
    created = 1796108400.0      # 2026-12-01T07:00:00Z
    monkeypatch.setattr(hostquirks, "detect_host", lambda: hostquirks.HostKind.KVM_PVM)
    assert snapshots.stale(snap, now=created + 60) is None
    reason = snapshots.stale(snap, now=created + 2 * 3600)
    assert "120 minutes old" in reason and "clock jumps" in reason
    assert "creation time" in snapshots.stale(_manifest(tmp_path / "t", "yesterday"), now=created)
    monkeypatch.setattr(hostquirks, "detect_host", lambda: hostquirks.HostKind.KVM)
    assert snapshots.stale(snap, now=created + 30 * 86400) is None


def test_cached_retakes_a_stale_snapshot_and_says_why(tmp_path, monkeypatch):
    import harness.snapshots as snapshots
    s = spec(tmp_path)
    old = _manifest(tmp_path / "cache" / spec_key(s), "2026-01-01T00:00:00+0000")
    taken, said = [], []
    monkeypatch.setattr(snapshots, "stale", lambda d: "too old")
    monkeypatch.setattr(snapshots, "take", lambda spec, d, log_dir: taken.append(d) or _manifest(d, "now"))
    assert snapshots.cached(s, tmp_path / "logs", cache=tmp_path / "cache", log=said.append) == old
    assert len(taken) == 1 and said == [f"snapshot {old.name} retaken: too old"]
    assert (old / "manifest.json").read_text() == '{"created": "now"}'
