"""The harness's own promise: a guest test is as short as a unit test."""
import pytest

TAP_SCRIPT = """\
echo 'TAP version 13'
echo '1..2'
grep -q ' /proc proc' /proc/mounts && echo 'ok 1 - proc is mounted' || echo 'not ok 1 - proc is mounted'
[ -r /proc/version ] && echo 'ok 2 - version readable' || echo 'not ok 2 - version readable'
"""


@pytest.mark.guest(files={"bin/tap-demo": TAP_SCRIPT}, backends=["kvm", "qemu"])
def test_uname_and_ktap_subtests(guest, ktap):
    assert guest.run("uname -r").status == 0
    result = ktap(guest, "sh /bin/tap-demo")
    assert [(c.name, c.status) for c in result.cases] == [("proc is mounted", "pass"), ("version readable", "pass")]
    assert result.passed


def test_new_file_passes_and_failure_attaches_logs(pytester, guest_kernel, tmp_path):
    pytester.makepyfile(test_user="""
        def test_uname(guest):
            assert guest.run("uname -r").status == 0

        def test_deliberately_failing(guest):
            assert guest.run("false").status == 0
    """)
    junit, keep = tmp_path / "junit.xml", tmp_path / "logs"
    result = pytester.runpytest_subprocess(f"--guest-kernel={guest_kernel}", f"--junitxml={junit}",
                                           f"--guest-keep-logs={keep}", timeout=900)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*serial log (guest*", "*lguest-harness: ready*"])
    xml = junit.read_text()
    assert "lguest-harness: ready" in xml and "launcher log" in xml
    saved = list(keep.glob("*deliberately_failing*/*.serial.log"))
    assert len(saved) == 1 and "lguest-harness: ready" in saved[0].read_text()
    assert not list(keep.glob("*test_uname*"))
