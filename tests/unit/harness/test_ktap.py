from harness.ktap import parse

KSELFTEST = """\
TAP version 13
1..4
# selftests: demo
ok 1 - first
not ok 2 - second
# expected 1, got 2
ok 3 third # SKIP no hardware
ok 4 - fourth # TODO later
"""

KUNIT = """\
KTAP version 1
1..2
    KTAP version 1
    # Subtest: example
    1..2
    ok 1 example_simple_test
    not ok 2 example_failing_test
not ok 1 example
ok 2 other_suite
"""


def test_kselftest_statuses_and_diagnostics():
    result = parse(KSELFTEST)
    assert result.planned == 4 and result.version == "TAP 13"
    assert [(c.name, c.status) for c in result.cases] == [
        ("first", "pass"), ("second", "fail"), ("third", "skip"), ("fourth", "todo")]
    assert result.cases[2].directive == "SKIP no hardware"
    assert not result.passed and [c.name for c in result.failed] == ["second"]


def test_nested_kunit_subtests_attach_to_their_parent():
    result = parse(KUNIT)
    assert [c.name for c in result.cases] == ["example", "other_suite"]
    names = [(c.name, c.status) for c in result.all_cases()]
    assert names == [("example", "fail"), ("example/example_simple_test", "pass"),
                     ("example/example_failing_test", "fail"), ("other_suite", "pass")]


def test_missing_cases_against_the_plan_is_not_a_pass():
    assert not parse("1..3\nok 1 a\nok 2 b\n").passed
    assert parse("1..2\nok 1 a\nok 2 b\n").passed
    assert not parse("no tap here\n").passed


def test_noise_between_lines_is_ignored():
    text = "TAP version 13\n[   1.0] random: crng init done\n1..1\nok 1 - x\n"
    result = parse(text)
    assert result.passed and result.cases[0].name == "x"
