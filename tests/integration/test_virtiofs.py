"""virtio-fs in the recipe guest: host directories served by the packaged virtiofsd over
vhost-user, mounted by the plugin's `shares=` mark at /mnt/TAG."""
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kvm, pytest.mark.slow]

ROOT = Path(tempfile.mkdtemp(prefix="lh-virtiofs-test-"))   # the mark needs the paths at collection
RO, RW = ROOT / "ro", ROOT / "rw"
SHARES = [f"{RO}:hostro:ro", f"{RW}:hostrw"]
BLOB = os.urandom(256 * 1024 + 123)     # not a page multiple: the tail must come back too


def tree_digest(root: Path) -> str:
    """Names, modes, sizes, mtimes and bytes of everything under root."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        h.update(f"{path.relative_to(root)} {st.st_mode:o} {st.st_size} {st.st_mtime_ns}\n".encode())
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module", autouse=True)
def trees():
    RO.mkdir()
    RW.mkdir()
    (RO / "blob").write_bytes(BLOB)
    (RO / "sub").mkdir()
    (RO / "sub" / "hello.txt").write_text("hello from the host\n")
    before = tree_digest(RO)
    yield before
    assert tree_digest(RO) == before, "the read-only share changed on the host"
    shutil.rmtree(ROOT)


@pytest.mark.guest(shares=SHARES)
def test_a_host_file_reads_back_identically(guest):
    out = guest.run("sha256sum /mnt/hostro/blob; cat /mnt/hostro/sub/hello.txt")
    assert out.status == 0, out.output
    assert out.stdout.split()[0] == hashlib.sha256(BLOB).hexdigest()
    assert out.stdout.endswith("hello from the host\n")


@pytest.mark.guest(shares=SHARES)
def test_the_mount_is_virtiofs_by_tag(guest):
    mounts = guest.run("cat /proc/mounts").stdout
    assert "hostro /mnt/hostro virtiofs ro" in mounts
    assert "hostrw /mnt/hostrw virtiofs rw" in mounts


@pytest.mark.guest(shares=SHARES)
def test_a_file_the_guest_writes_appears_on_the_host(guest):
    out = guest.run("mkdir /mnt/hostrw/dir && printf 'written in the guest\\n' > /mnt/hostrw/dir/out && sync")
    assert out.status == 0, out.output
    assert (RW / "dir" / "out").read_text() == "written in the guest\n"
    assert sorted(p.name for p in RW.rglob("*")) == ["dir", "out"]


@pytest.mark.guest(shares=SHARES)
def test_a_read_only_share_refuses_writes_even_remounted(trees, guest):
    assert not guest.run("echo x > /mnt/hostro/new").ok
    # A guest that remounts rw still cannot write: the host refuses (virtiofsd's view is read-only).
    remount = guest.run("mount -o remount,rw /mnt/hostro && echo y > /mnt/hostro/sub/hello.txt")
    assert not remount.ok
    assert tree_digest(RO) == trees
