"""Issue 18 (7): what a new user reads and types — --version, exit statuses in boot --help,
demo --kernel, a readable serial log, and README examples for what was undocumented."""
import re
from pathlib import Path

import pytest

from harness import cli, kernel
from harness.console import readable
from launcher.hypervisor.base import Outcome
from tests.unit import tiny_guests as g

README = (Path(__file__).resolve().parents[3] / "README.md").read_text()


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert re.fullmatch(r"lguest-harness (\d+\.\d+\S*|\(not installed\))\n", capsys.readouterr().out)


def test_boot_help_lists_every_exit_status(capsys):
    with pytest.raises(SystemExit):
        cli.main(["boot", "--help"])
    text = capsys.readouterr().out
    section = text[text.index("exit status:"):]
    for status, meaning in [(1, "bad input"), (2, "usage error")] + [(o.exit_status, o.text) for o in Outcome]:
        assert re.search(rf"^  {status}\s+.*{re.escape(meaning)}", section, re.M), (status, meaning)


def test_demo_boots_your_own_kernel(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LGUEST_HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(kernel, "ensure_kernel", lambda *a, **k: pytest.fail("built the recipe kernel"))
    mine = tmp_path / "my-vmlinux"
    mine.write_bytes(g.elf(g.SPIN))
    monkeypatch.setattr("sys.stdin", open("/dev/null"))       # scripted, not interactive
    assert cli.main(["demo", "--backend=fake", "--kernel", str(mine)]) == 0
    out = capsys.readouterr().out
    assert f"booting {mine}" in out and "lguest-harness: ready" in out and "exited with status 0" in out


def test_demo_with_a_kernel_that_cannot_boot_is_one_line(tmp_path, capsys):
    assert cli.main(["demo", "--kernel", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"--kernel {tmp_path} is a directory" in err and err.count("\n") == 1


def test_serial_log_for_people_has_no_terminal_escapes():
    raw = "# \x1b[6necho hi\r\nhi\r\n\x1b[0;32mok\x1b[0m\r\n"
    assert readable(raw) == "# echo hi\nhi\nok\n"


@pytest.mark.parametrize("needle", [
    "@pytest.mark.guest(files=",          # files= format, with an example
    "guest_factory(block=disk)",          # how a disk_image reaches a guest
    "ktap(guest, ",                       # the ktap call
    "LGUEST_HARNESS_CACHE=",              # the cache variable, in use
    "--in-place", "--config FILE",        # building a tree that is already built, from your own .config
    "demo [--kernel K]",
])
def test_readme_documents(needle):
    assert needle in README


def test_readme_names_everything_the_fragment_turns_off():
    off = [name.removeprefix("CONFIG_") for name, value in kernel.fragment_options().items() if value == "n"]
    section = README[README.index("## Testing your kernel"):README.index("2. Write a test")]
    missing = [name for name in off if f"`{name}`" not in section]
    assert not missing, missing
