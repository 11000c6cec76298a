"""Issue 18 (2, 3): `kernel build --source TREE` on a tree already built in place, from the
developer's own .config, and a failure that shows the end of the build log.  The tree is a
stand-in: a Makefile with the kernel's targets and a merge_config.sh that merges for real."""
import os
import textwrap

import pytest

from harness import cli, kernel

MAKEFILE = """\
O ?= .
tinyconfig:
\tprintf 'CONFIG_TINY=y\\n# CONFIG_64BIT is not set\\n' > $(O)/.config
olddefconfig:
\t@true
vmlinux:
\t@echo "  CC      init/main.o"
\t@$(if $(FAIL),echo "init/main.c:1:1: error: $(FAIL)"; exit 2,true)
\techo vmlinux > $(O)/vmlinux; echo map > $(O)/System.map
bzImage:
\tmkdir -p $(O)/arch/x86/boot; echo bz > $(O)/arch/x86/boot/bzImage
kernelrelease:
\t@echo 6.1.0-standin
"""

MERGE = """\
#!/usr/bin/env python3
import sys
from harness.kernel import fragment_options
args = sys.argv[1:]
out = args[args.index("-O") + 1] if "-O" in args else "."
base, fragment = args[-2], args[-1]
options = fragment_options(open(base).read())
options.update(fragment_options(open(fragment).read()))
with open(out + "/.config", "w") as f:
    for name, value in options.items():
        f.write(f"# {name} is not set\\n" if value == "n" else f"{name}={value}\\n")
"""


@pytest.fixture
def tree(tmp_path, monkeypatch):
    monkeypatch.setenv("LGUEST_HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(kernel.Path(__file__).parents[3]),
                                                                   os.environ.get("PYTHONPATH")])))
    root = tmp_path / "linux"
    (root / "scripts/kconfig").mkdir(parents=True)
    (root / "Makefile").write_text(MAKEFILE)
    merge = root / "scripts/kconfig/merge_config.sh"
    merge.write_text(MERGE)
    merge.chmod(0o755)
    return root


def _own_config(path):
    path.write_text("CONFIG_64BIT=y\nCONFIG_SMP=y\nCONFIG_MODULES=y\nCONFIG_MY_DRIVER=y\n")
    return path


def test_a_tree_built_in_place_is_refused_up_front_with_both_ways_out(tree, capsys):
    _own_config(tree / ".config")
    assert cli.main(["kernel", "build", "--source", str(tree)]) == 1
    err = capsys.readouterr().err
    assert f"{tree} is configured or built in place" in err
    assert f"--source {tree} --in-place" in err and "mrproper" in err
    assert "CONFIG_SMP=y" in (tree / ".config").read_text()      # nothing ran, nothing overwritten


def test_in_place_starts_from_the_trees_config_and_says_what_it_turned_off(tree, capsys):
    _own_config(tree / ".config")
    assert cli.main(["kernel", "build", "--source", str(tree), "--in-place", "-j1"]) == 0
    out = capsys.readouterr().out
    assert f"building in {tree} itself (--in-place), from {tree / '.config'} merged with the fragment" in out
    assert "merging the fragment turned off 2 option(s) that" in out and "SMP, MODULES" in out
    merged = (tree / ".config").read_text()
    assert "CONFIG_MY_DRIVER=y" in merged and "# CONFIG_SMP is not set" in merged
    assert (tree / "vmlinux").exists() and "vmlinux    " in out and "release    6.1.0-standin" in out


def test_config_file_replaces_tinyconfig_out_of_tree(tree, tmp_path, capsys):
    mine = _own_config(tmp_path / "my.config")
    assert cli.main(["kernel", "build", "--source", str(tree), "--config", str(mine), "-j1"]) == 0
    out = capsys.readouterr().out
    assert f"starting from {mine} (not tinyconfig)" in out and "SMP, MODULES" in out
    assert not (tree / ".config").exists()                          # out of tree: the tree is untouched
    built = [p for p in (tmp_path / "cache/kernel").glob("*/obj/.config")]
    assert len(built) == 1 and "CONFIG_MY_DRIVER=y" in built[0].read_text()
    assert "CONFIG_TINY" not in built[0].read_text()


def test_a_failing_build_shows_the_end_of_its_log(tree, capsys, monkeypatch):
    monkeypatch.setenv("FAIL", "expected ';' before 'return'")
    assert cli.main(["kernel", "build", "--source", str(tree), "-j1"]) == 1
    err = capsys.readouterr().err
    assert "vmlinux bzImage` failed; the end of" in err and "build.log:" in err
    assert "init/main.c:1:1: error: expected ';' before 'return'" in err


def test_merge_into_a_tree_says_what_it_turned_off(tree, capsys):
    _own_config(tree / ".config")
    assert cli.main(["kernel", "config", "--merge", str(tree)]) == 0
    out = capsys.readouterr().out
    assert "merged guest.config" in out and "turned off 2 option(s)" in out and "SMP, MODULES" in out


def test_turned_off_lists_what_was_on_and_is_off():
    before = "CONFIG_A=y\nCONFIG_B=m\nCONFIG_C=\"x\"\n# CONFIG_D is not set\nCONFIG_E=y\n"
    after = "CONFIG_A=y\n# CONFIG_B is not set\n# CONFIG_D is not set\n"
    assert kernel.turned_off(before, after) == ["CONFIG_B", "CONFIG_C", "CONFIG_E"]


@pytest.mark.parametrize("action,words", [
    ("build", ["out of tree", "--in-place", "tinyconfig", "--config FILE", "LGUEST_HARNESS_CACHE"]),
    ("patch", ["kvm_pvm", "/sys/module/kvm_pvm", "patch -p1", "do not need it"]),
])
def test_kernel_help_says_what_it_does_and_when(action, words, capsys):
    with pytest.raises(SystemExit):
        cli.main(["kernel", action, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for word in words:
        assert word in text, word
