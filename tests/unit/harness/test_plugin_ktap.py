"""The ktap fixture turns each subtest into its own pytest result (no hypervisor needed)."""


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
    result.assert_outcomes(passed=2, failed=1, skipped=1)
    result.stdout.fnmatch_lines(["*test_suite::second*", "*expected 1, got 2*"])
    xml = junit.read_text()
    assert 'name="test_suite::first"' in xml or "first" in xml
    assert "no hardware" in xml
