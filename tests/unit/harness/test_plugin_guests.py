"""Issue 18 (3, 4): the recipe kernel's build shows its progress in pytest's terminal, and
identical files=/commands= marks share one initramfs and so one guest."""
import pytest

from harness import kernel as recipe
from tests.unit import tiny_guests as g


def test_recipe_build_progress_reaches_the_terminal(pytester, monkeypatch, tmp_path):
    vmlinux = tmp_path / "vmlinux"
    vmlinux.write_bytes(g.elf(g.SPIN))

    def slow_build(log, **_):
        log("kernel: building vmlinux and bzImage in /somewhere (-j2, log: build.log)")
        log("kernel: 1234 steps, 15 s")
        return recipe.KernelBuild(vmlinux, vmlinux, vmlinux, "6.1")
    monkeypatch.setattr(recipe, "ensure_kernel", slow_build)
    pytester.makepyfile(test_k="""
        def test_kernel(guest_kernel):
            assert guest_kernel.name == "vmlinux"
    """)
    result = pytester.runpytest()          # output captured as usual: no -s
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["lguest-harness kernel: building vmlinux and bzImage*",
                                 "lguest-harness kernel: 1234 steps, 15 s"])


@pytest.mark.parametrize("mark", ['files={"etc/motd": "hello"}', 'commands=("echo one",)'])
def test_identical_marks_share_one_guest(pytester, tmp_path, mark):
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(g.elf(g.SPIN))
    other = mark.replace("hello", "other").replace("one", "two")
    pytester.makepyfile(test_share=f"""
        import pytest

        @pytest.mark.guest({mark})
        def test_a(guest):
            assert guest.name == "guest1"

        @pytest.mark.guest({mark})
        def test_b(guest):
            assert guest.name == "guest1"           # the same guest, not a second boot

        @pytest.mark.guest({other})
        def test_c(guest):
            assert guest.name == "guest2"           # other content: its own initramfs and guest
    """)
    result = pytester.runpytest(f"--guest-kernel={kernel}", "--guest-backend=fake", f"--basetemp={tmp_path / 'b'}")
    result.assert_outcomes(passed=3)
    assert len(list((tmp_path / "b").rglob("*.launcher.log"))) == 2
    assert len(list((tmp_path / "b").rglob("initramfs-*.cpio"))) == 2
