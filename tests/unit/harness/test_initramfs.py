import subprocess

from harness.initramfs import READY_MARKER, build_initramfs


def test_image_unpacks_with_gnu_cpio(tmp_path):
    image = build_initramfs(tmp_path / "initramfs.cpio",
                            extra_files={"etc/motd": "hello\n", "bin/tool": b"\x7fELF"},
                            commands=("echo extra-step",))
    root = tmp_path / "root"
    root.mkdir()
    listing = subprocess.run(["cpio", "-t"], stdin=open(image, "rb"), capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    names = listing.stdout.split()
    assert {"init", "bin/busybox", "bin/sh", "dev/console", "etc/motd"} <= set(names)
    subprocess.run(["cpio", "-idm", "--no-absolute-filenames", "--quiet"], cwd=root,
                   stdin=open(image, "rb"), check=True)
    init = (root / "init").read_text()
    assert init.startswith("#!/bin/sh") and READY_MARKER in init and "echo extra-step" in init
    assert init.index("extra-step") < init.index(READY_MARKER)
    assert (root / "init").stat().st_mode & 0o111
    assert (root / "etc/motd").read_text() == "hello\n"
    assert (root / "bin/sh").is_symlink() and (root / "bin/sh").readlink().name == "busybox"


def test_custom_init_replaces_default(tmp_path):
    image = build_initramfs(tmp_path / "i.cpio", init_script="#!/bin/sh\necho custom\n")
    root = tmp_path / "r"
    root.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet"], cwd=root, stdin=open(image, "rb"), check=True)
    assert (root / "init").read_text() == "#!/bin/sh\necho custom\n"


def test_image_is_reproducible(tmp_path):
    a = build_initramfs(tmp_path / "a.cpio").read_bytes()
    b = build_initramfs(tmp_path / "b.cpio").read_bytes()
    assert a == b and len(a) % 4 == 0
