"""Issue 18 (1): a guest that cannot boot says why, in the report, the junit file and
--guest-keep-logs; a kernel or initramfs that cannot work is one line before any guest starts.

The guests are the fake backend's (no hypervisor): the launcher runs for real in its own process."""
import pytest

from tests.unit import tiny_guests as g

SHARED_GUEST_TESTS = """
    def test_one(guest):
        assert guest.run("true").ok

    def test_two(guest):
        assert guest.run("true").ok
"""


@pytest.fixture
def kernel(tmp_path):
    path = tmp_path / "vmlinux"
    path.write_bytes(g.elf(g.SPIN))
    return path


@pytest.mark.parametrize("make,message", [
    (lambda tmp: tmp / "missing", "--guest-kernel {p}: no such file"),
    (lambda tmp: tmp, "--guest-kernel {p} is a directory; give the kernel file, a vmlinux or a bzImage"),
    (lambda tmp: _file(tmp / ".config", b"CONFIG_64BIT=y\n"), "--guest-kernel {p} is not a kernel"),
])
def test_a_kernel_that_cannot_boot_is_one_line_before_anything_starts(pytester, tmp_path, make, message):
    path = make(tmp_path)
    pytester.makepyfile(test_k=SHARED_GUEST_TESTS)
    result = pytester.runpytest(f"--guest-kernel={path}", "--guest-backend=fake")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message.format(p=path)}*"])
    assert "Traceback" not in result.stderr.str()


def test_a_missing_initrd_is_one_line(pytester, kernel, tmp_path):
    pytester.makepyfile(test_k=SHARED_GUEST_TESTS)
    result = pytester.runpytest(f"--guest-kernel={kernel}", f"--guest-initrd={tmp_path / 'nope.cpio'}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: --guest-initrd {tmp_path / 'nope.cpio'}: no such file"])


def test_a_32_bit_kernel_on_kvm_is_a_setup_error_naming_the_remedy(pytester, tmp_path):
    path = _file(tmp_path / "vmlinux32", g.elf(g.SPIN, 32))
    pytester.makepyfile(test_k="""
        import pytest

        @pytest.mark.guest(backends=["kvm", "fake"])
        def test_it(guest):
            assert guest.run("true").ok
    """)
    result = pytester.runpytest(f"--guest-kernel={path}")
    result.assert_outcomes(passed=1, errors=1)        # the fake backend boots any kind
    result.stdout.fnmatch_lines([
        f"*--guest-kernel {path} is a 32-bit kernel (ELF32 vmlinux (EM_386)); the kvm backend boots only "
        f"64-bit x86 kernels: rebuild it with CONFIG_64BIT=y*"])


def test_a_launcher_that_exits_explains_itself_everywhere(pytester, tmp_path):
    # A kernel whose segment does not fit the guest's memory: the launcher exits with status 1
    # and its one line is the cause.  It used to reach no report, no junit file, no kept log.
    too_big = _file(tmp_path / "vmlinux", g.make_elf(64, [(0x1000000, b"\x90", 0x1000)], entry=0x1000000))
    pytester.makepyfile(test_k=SHARED_GUEST_TESTS)
    junit, keep = tmp_path / "junit.xml", tmp_path / "kept"
    # -rN: no short summary, whose lines pytest leaves untruncated (and so counted twice) under CI=true
    result = pytester.runpytest(f"--guest-kernel={too_big}", "--guest-backend=fake", "--guest-mem=8",
                                f"--junitxml={junit}", f"--guest-keep-logs={keep}", "-rN")
    result.assert_outcomes(errors=2)
    cause = "segment 0 at p_paddr 0x1000000+0x1000 does not fit in guest memory"
    result.stdout.fnmatch_lines([
        "*GuestExited: guest1: launcher exited (status 1) while waiting for 'lguest-harness: ready'",
        f"launcher's last word: lguest-harness boot: kernel: {cause}*",
        "*--- launcher log tail (*guest1.launcher.log) ---",
        f"lguest-harness boot: kernel: {cause}*",
        "*Captured stderr launcher log (guest1)*",
        # the second test sharing that guest does not boot it again
        "*GuestExited: not booted again: it failed for test_k.py::test_one",
    ])
    assert result.stdout.str().count("launcher exited (status 1)") == 2
    assert "def _pooled" not in result.stdout.str() and "During handling" not in result.stdout.str()
    assert cause in junit.read_text() and 'name="launcher log (guest1)"' in junit.read_text()
    kept = sorted(p.relative_to(keep).as_posix() for p in keep.rglob("*.log"))
    assert kept == [f"test_k.py_{t}/guest1.{log}.log" for t in ("test_one", "test_two")
                    for log in ("launcher", "serial", "serial.raw")]
    assert cause in (keep / "test_k.py_test_one" / "guest1.launcher.log").read_text()


def test_a_guest_that_times_out_shows_the_launcher_lines_too(pytester, kernel, tmp_path):
    pytester.makepyfile(test_k="""
        def test_hangs(guest_factory, monkeypatch):
            monkeypatch.setattr("harness.plugin.READY_TIMEOUT", 3)
            monkeypatch.setattr("harness.console.READY_MARKER", "a marker this guest never prints")
            guest_factory()
    """)
    result = pytester.runpytest(f"--guest-kernel={kernel}", "--guest-backend=fake")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*GuestTimeout: guest1: timed out after 3 s waiting for*",
                                 "*--- launcher log tail*", "*command line: console=ttyS0*"])


def _file(path, data: bytes):
    path.write_bytes(data)
    return path


def test_a_timed_out_command_does_not_poison_the_next_test_sharing_the_guest(pytester, kernel):
    """Issue 16 (6, 7): the module's guest is stopped after a command timed out, the next test gets
    a fresh one under a new name, and module teardown releases the pool without a KeyError."""
    pytester.makepyfile(test_k="""
        import pytest
        from harness.console import GuestTimeout

        NAMES = []

        def test_hangs(guest):
            NAMES.append(guest.name)
            with pytest.raises(GuestTimeout):
                guest.run("sleep 5", timeout=1)
            raise GuestTimeout("propagated, as an unhandled timeout would")

        def test_after(guest):
            NAMES.append(guest.name)
            assert guest.run("echo fresh").output == "fresh\\n"

        def test_names_differ():
            assert len(NAMES) == 2 and NAMES[0] != NAMES[1], NAMES
    """)
    result = pytester.runpytest_subprocess(f"--guest-kernel={kernel}", "--guest-backend=fake", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*a command timed out, so its guest was stopped*"])
    assert "KeyError" not in result.stdout.str() and "error" not in result.stdout.lines[-1]
