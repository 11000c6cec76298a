"""Backend parametrisation: ids name the backend; a backend the host lacks is skipped, with why."""


def test_missing_backend_is_skipped_with_the_device_it_needs(pytester, monkeypatch):
    pytester.makepyfile(test_b="""
        import pytest

        @pytest.mark.guest(backends=["lguest"])
        def test_needs_lguest(guest_backend):
            assert guest_backend == "lguest"
    """)
    monkeypatch.setattr("harness.backends.lacks", lambda backend: "/nonexistent/lguest" if backend == "lguest" else None)
    result = pytester.runpytest("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*backend lguest needs /nonexistent/lguest, which this host lacks*"])


def test_ids_name_each_backend(pytester):
    pytester.makepyfile(test_ids="""
        import pytest

        @pytest.mark.guest(backends=["fake", "kvm"])
        def test_each(guest_backend, request):
            assert request.node.name == f"test_each[{guest_backend}]"
    """)
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*test_each?fake? PASSED*", "*test_each?kvm? PASSED*"])
