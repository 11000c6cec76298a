"""The ktap fixture turns each subtest into its own pytest result (no hypervisor needed)."""
import pytest

from tests.unit import tiny_guests as g


def test_subtests_become_results(pytester):
    pytester.makepyfile(test_tap="""
        from harness.console import CommandResult

        OUTPUT = '''KTAP version 1
        1..3
        ok 1 first
        # expected 1, got 2
        not ok 2 second
        ok 3 third # SKIP no hardware
        '''.replace('        ', '')

        class StubGuest:
            def run(self, command, timeout=None):
                return CommandResult(OUTPUT, 0)

        def test_suite(ktap):
            result = ktap(StubGuest(), "run-suite")
            assert [c.status for c in result.cases] == ["pass", "fail", "skip"]
    """)
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest(f"--junitxml={junit}", "-rA")
    result.assert_outcomes(passed=1, failed=2, skipped=1)        # the parent fails with its subtest
    result.stdout.fnmatch_lines(["*test_suite::second*", "*expected 1, got 2*",
                                 "FAILED test_tap.py::test_suite - 1 KTAP subtest(s) failed: second (not ok 2)"])
    xml = junit.read_text()
    assert 'name="test_suite::first"' in xml or "first" in xml
    assert "no hardware" in xml


STUB = """
    from harness.console import CommandResult

    class StubGuest:
        def run(self, command, timeout=None):
            return CommandResult("KTAP version 1\\n1..3\\nok 1 a\\nnot ok 2 b\\nok 3 c\\n", 0)

    def test_suite(ktap):
        ktap(StubGuest(), "run-suite")

    def test_after():
        pass
"""


def test_progress_counts_subtests_and_never_passes_100_percent(pytester):
    # Issue 18 (6): the progress ran to [150%] and the subtests' letters were swallowed.
    pytester.makepyfile(test_tap=STUB)
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(["test_tap.py .F.F. *[[]100%[]]"])
    assert "%]" in result.stdout.str() and not any(
        int(p) > 100 for p in __import__("re").findall(r"\[\s*(\d+)%\]", result.stdout.str()))


def test_verbose_lists_each_subtest_and_the_parent_as_failed(pytester):
    pytester.makepyfile(test_tap=STUB)
    result = pytester.runpytest("-v")
    result.stdout.fnmatch_lines([
        "test_tap.py::test_suite::a PASSED*[[] 20%[]]",
        "test_tap.py::test_suite::b FAILED*[[] 40%[]]",
        "test_tap.py::test_suite::c PASSED*[[] 60%[]]",
        "test_tap.py::test_suite FAILED*[[] 80%[]]",
        "test_tap.py::test_after PASSED*[[]100%[]]",
    ])


def test_a_failing_subtest_keeps_the_guests_logs(pytester, tmp_path):
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(g.elf(g.SPIN))
    pytester.makepyfile(test_tap="""
        def test_suite(guest, ktap):
            ktap(guest, "echo 'KTAP version 1'; echo '1..2'; echo 'ok 1 fine'; echo 'not ok 2 broken'")
    """)
    keep = tmp_path / "kept"
    result = pytester.runpytest(f"--guest-kernel={kernel}", "--guest-backend=fake", f"--guest-keep-logs={keep}")
    result.assert_outcomes(passed=1, failed=2)
    kept = keep / "test_tap.py_test_suite"
    # Commands run over the command channel, so the serial log holds the console, not their output.
    assert "lguest-harness: ready" in (kept / "guest1.serial.log").read_text()
    assert (kept / "guest1.launcher.log").read_text()
    result.stdout.fnmatch_lines(["*broken*"])
