"""The guest kernel recipe: tinyconfig (or your .config) + our fragment (+ the kvm_pvm patch), cached.

`lguest-harness kernel build` builds Debian's linux-source-6.1 (installed with apt when
missing) or a tree given with --source: out of tree by default (the tree must be clean),
or in the tree itself with --in-place; --config FILE starts from your own .config instead
of tinyconfig.  `kernel config` prints or merges the fragment; `kernel patch` prints the
kvm_pvm compatibility patch.  Results live in $LGUEST_HARNESS_CACHE/kernel/<key>/ (default
~/.cache/lguest-harness) where key hashes source + fragment + patch (+ your config).
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

HELP = "build the guest kernel recipe, or print its config fragment and patch"

RECIPE_DIR = Path(__file__).parent / "kernel_recipe"
FRAGMENT = RECIPE_DIR / "guest.config"
COMPAT_PATCH = RECIPE_DIR / "kvm-pvm-compat.patch"
DEBIAN_PACKAGE = "linux-source-6.1"
DEBIAN_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
RECIPE_VERSION = "1"
PATCH_MARKER = "kvm_pvm_quirks"
SHOW_TURNED_OFF = 30
LOG_TAIL_LINES = 25


class KernelBuildError(RuntimeError):
    """The recipe could not produce a kernel; the message says which step failed."""


@dataclass(frozen=True)
class KernelBuild:
    vmlinux: Path
    bzimage: Path
    system_map: Path
    release: str


def cache_root() -> Path:
    return Path(os.environ.get("LGUEST_HARNESS_CACHE", Path.home() / ".cache" / "lguest-harness"))


# -- the fragment ------------------------------------------------------------------
def fragment_options(text: str | None = None) -> dict[str, str]:
    """CONFIG_X -> 'y'/'m'/value, or 'n' for '# CONFIG_X is not set'."""
    options = {}
    for line in (text if text is not None else FRAGMENT.read_text()).splitlines():
        line = line.strip()
        if line.startswith("CONFIG_") and "=" in line:
            name, value = line.split("=", 1)
            options[name] = value
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            options[line[2:-len(" is not set")]] = "n"
    return options


def turned_off(before: str, after: str) -> list[str]:
    """Options on (y, m or a value) in `before` that are off in `after`."""
    old, new = fragment_options(before), fragment_options(after)
    return [name for name, value in old.items() if value != "n" and new.get(name, "n") == "n"]


def report_turned_off(names: list[str], source: str, log, listing: Path | None = None) -> None:
    """One line: what the merge turned off, the fragment's own options first."""
    if listing is not None:
        listing.write_text("".join(f"{name}\n" for name in names))
    if not names:
        log(f"kernel: the fragment turned off nothing that {source} had on")
        return
    ours = set(fragment_options())
    ordered = [n for n in names if n in ours] + [n for n in names if n not in ours]
    shown = ordered[:SHOW_TURNED_OFF]
    more = f" and {len(ordered) - len(shown)} more" + (f" (all in {listing})" if listing else "") \
        if len(ordered) > len(shown) else ""
    log(f"kernel: merging the fragment turned off {len(names)} option(s) that {source} had on: "
        f"{', '.join(n.removeprefix('CONFIG_') for n in shown)}{more}")


def config_mismatches(config_text: str, wanted: dict[str, str]) -> list[str]:
    """Options of the fragment that Kconfig did not honour (dependencies missing)."""
    have = fragment_options(config_text)
    return [f"{name}: wanted {value}, got {have.get(name, 'n')}"
            for name, value in wanted.items() if have.get(name, "n") != value]


# -- sources -------------------------------------------------------------------------
def ensure_debian_source(log=print) -> Path:
    if not DEBIAN_TARBALL.exists():
        log(f"kernel: installing {DEBIAN_PACKAGE} with apt-get")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "--no-install-recommends", DEBIAN_PACKAGE]):
            if subprocess.run(cmd, env=env).returncode != 0:
                raise KernelBuildError(f"`{' '.join(cmd)}` failed; install {DEBIAN_PACKAGE} by hand")
    return DEBIAN_TARBALL


def _source_identity(source: Path) -> str:
    if source.is_file():
        st = source.stat()
        return f"tarball:{source.name}:{st.st_size}:{int(st.st_mtime)}"
    return f"tree:{source.resolve()}"


def cache_key(source: Path, patched: bool, config: Path | None = None, in_place: bool = False) -> str:
    h = hashlib.sha256()
    for part in (RECIPE_VERSION, _source_identity(source), FRAGMENT.read_text(),
                 COMPAT_PATCH.read_text() if patched else "unpatched",
                 config.read_text(errors="replace") if config else "tinyconfig", "in place" if in_place else ""):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def _extract(tarball: Path, dest: Path, log) -> Path:
    """Extract the tarball into dest once; returns the kernel tree inside it."""
    done = dest / ".extracted"
    if not done.exists():
        log(f"kernel: extracting {tarball.name}")
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        with tarfile.open(tarball) as tar:
            tar.extractall(dest, filter="fully_trusted")
        done.touch()
    trees = [p for p in dest.iterdir() if (p / "Makefile").exists()]
    if len(trees) != 1:
        raise KernelBuildError(f"{tarball} does not hold exactly one kernel tree")
    return trees[0]


def _apply_patch(tree: Path, log) -> None:
    done = tree / ".lguest-harness-patched"
    if done.exists():
        return
    log(f"kernel: applying {COMPAT_PATCH.name}")
    result = subprocess.run(["patch", "-p1", "--forward", "--batch", "-i", str(COMPAT_PATCH)],
                            cwd=tree, capture_output=True, text=True)
    if result.returncode != 0:
        raise KernelBuildError(f"{COMPAT_PATCH.name} does not apply to {tree}:\n{result.stdout}{result.stderr}")
    done.touch()


# -- building -------------------------------------------------------------------------
def _make(tree: Path, objdir: Path | None, targets: list[str], logfile, jobs: int | None = None,
          progress=None) -> None:
    cmd = ["make", "-C", str(tree)]
    if objdir is not None:
        cmd.append(f"O={objdir}")
    if jobs:
        cmd.append(f"-j{jobs}")
    cmd += targets
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        logfile.write(line)
        if progress:
            progress(line)
    if proc.wait() != 0:
        raise KernelBuildError(f"`{' '.join(cmd)}` failed{_log_tail(logfile)}")


def _log_tail(logfile) -> str:
    """The last lines of the build log (where make says what went wrong), and where the rest is."""
    logfile.flush()
    try:
        lines = Path(logfile.name).read_text(errors="replace").rstrip().splitlines()[-LOG_TAIL_LINES:]
    except OSError:
        lines = []
    return f"; the end of {logfile.name}:\n  " + "\n  ".join(lines) if lines else f"; see {logfile.name}"


class _Progress:
    """One line every few seconds instead of thousands of compiler lines."""

    def __init__(self, log, every: float = 15.0):
        self.log, self.every = log, every
        self.start = self.last = time.monotonic()
        self.objects = 0

    def __call__(self, line: str) -> None:
        if line.lstrip().startswith(("CC", "AS", "LD", "AR")):
            self.objects += 1
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self.log(f"kernel: {self.objects} steps, {now - self.start:.0f} s")


def _configure(tree: Path, objdir: Path | None, logfile, start: Path | None = None, log=print,
               listing: Path | None = None) -> None:
    """.config from tinyconfig, or from `start` (your own), merged with the fragment."""
    cfg = (objdir or tree) / ".config"
    if start is None:
        _make(tree, objdir, ["tinyconfig"], logfile)
        before = None
    else:
        before = start.read_text(errors="replace")
        cfg.parent.mkdir(parents=True, exist_ok=True)
        if not cfg.exists() or not cfg.samefile(start):
            shutil.copyfile(start, cfg)
        log(f"kernel: starting from {start} (not tinyconfig)")
    merge = subprocess.run([str(tree / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(cfg.parent),
                            str(cfg), str(FRAGMENT)],
                           cwd=tree, stdout=logfile, stderr=subprocess.STDOUT)
    if merge.returncode != 0:
        raise KernelBuildError(f"merging {FRAGMENT.name} failed{_log_tail(logfile)}")
    _make(tree, objdir, ["olddefconfig"], logfile)
    after = cfg.read_text()
    if before is not None:
        report_turned_off(turned_off(before, after), str(start), log, listing)
    wrong = config_mismatches(after, fragment_options())
    if wrong:
        raise KernelBuildError("the kernel config does not honour the fragment:\n  " + "\n  ".join(wrong))


def _build(tree: Path, objdir: Path | None, out: Path, jobs: int, log, start: Path | None = None) -> KernelBuild:
    cfg_dir = objdir or tree
    out.mkdir(parents=True, exist_ok=True)
    cfg_dir.mkdir(parents=True, exist_ok=True)
    with open(out / "build.log", "w") as logfile:
        _configure(tree, objdir, logfile, start, log, out / "turned-off.txt")
        log(f"kernel: building vmlinux and bzImage in {cfg_dir} (-j{jobs}, log: {logfile.name})")
        started = time.monotonic()
        _make(tree, objdir, ["vmlinux", "bzImage"], logfile, jobs, _Progress(log))
        log(f"kernel: built in {time.monotonic() - started:.0f} s")
    release = subprocess.run(["make", "-s", "-C", str(tree)] + ([f"O={objdir}"] if objdir else [])
                             + ["kernelrelease"], capture_output=True, text=True).stdout.strip()
    for src, name in ((cfg_dir / "vmlinux", "vmlinux"), (cfg_dir / "arch/x86/boot/bzImage", "bzImage"),
                      (cfg_dir / "System.map", "System.map"), (cfg_dir / ".config", "config")):
        shutil.copyfile(src, out / name)
    (out / "release").write_text(release + "\n")
    return _cached(out)


def _cached(out: Path) -> KernelBuild:
    return KernelBuild(vmlinux=out / "vmlinux", bzimage=out / "bzImage",
                       system_map=out / "System.map", release=(out / "release").read_text().strip())


def _is_complete(out: Path) -> bool:
    return all((out / n).exists() for n in ("vmlinux", "bzImage", "System.map", "release"))


def ensure_kernel(source: Path | None = None, log=print, jobs: int | None = None, *,
                  config: Path | None = None, in_place: bool = False) -> KernelBuild:
    """The recipe kernel: reuse the cached build or make it (a few minutes on 2 cores).

    A tree is built out of tree (under the cache; the tree must be clean) unless in_place,
    which builds in the tree itself, starting from its .config when it has one.  config
    starts from that file instead of tinyconfig (or instead of the tree's .config)."""
    jobs = jobs or os.cpu_count() or 1
    source = Path(source) if source else ensure_debian_source(log)
    config = Path(config) if config else None
    if config is not None and not config.is_file():
        raise KernelBuildError(f"--config {config}: no such file")
    if source.is_file() and in_place:
        raise KernelBuildError(f"--in-place needs a kernel tree, and {source} is a file")
    if not source.is_file() and not (source / "Makefile").is_file():
        raise KernelBuildError(f"--source {source} is not a kernel tree (no Makefile)")
    patched = source.is_file()  # a tree of the user's own is never modified (but for its .config with --in-place)
    key = cache_key(source, patched, config, in_place)
    kernel_dir = cache_root() / "kernel"
    kernel_dir.mkdir(parents=True, exist_ok=True)
    out = kernel_dir / key
    with open(kernel_dir / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build per key, whoever asks first
        if source.is_file() and _is_complete(out):
            return _cached(out)
        if source.is_file():
            work = kernel_dir / f"build-{key}"
            tree = _extract(source, work, log)
            _apply_patch(tree, log)
            build = _build(tree, None, out, jobs, log, config)
            shutil.rmtree(work, ignore_errors=True)  # ~2 GB; the cache keeps what boots need
            return build
        if PATCH_MARKER not in _grep_tree(source):
            log(f"kernel: warning: {source} lacks the kvm_pvm compatibility patch; on kvm_pvm "
                f"hosts apply it first: lguest-harness kernel patch | patch -p1")
        if in_place:
            own = config or (source / ".config" if (source / ".config").is_file() else None)
            log(f"kernel: building in {source} itself (--in-place), from "
                + (f"{own} merged with the fragment" if own else "tinyconfig and the fragment"))
            return _build(source, None, out, jobs, log, own)
        if _configured_in_place(source):
            raise KernelBuildError(
                f"{source} is configured or built in place (it has .config or include/config), and Kbuild "
                f"will not build out of tree from it.  Either build in it: `lguest-harness kernel build "
                f"--source {source} --in-place` (merges the fragment into its .config, add --config FILE to "
                f"start from another), or clean it with `make -C {source} mrproper` (deletes its .config)")
        return _build(source, out / "obj", out, jobs, log, config)


def _configured_in_place(tree: Path) -> bool:
    return (tree / ".config").exists() or (tree / "include" / "config").is_dir()


def _grep_tree(tree: Path) -> str:
    try:
        return (tree / "arch/x86/include/asm/proto.h").read_text()
    except OSError:
        return ""


# -- CLI -------------------------------------------------------------------------------
BUILD_HELP = "build (or reuse) the guest kernel; prints the paths of vmlinux, bzImage and System.map"
BUILD_DESCRIPTION = """\
Build the guest kernel and cache it under $LGUEST_HARNESS_CACHE/kernel/ (default
~/.cache/lguest-harness).  Without --source: Debian's linux-source-6.1, patched with the
kvm_pvm compatibility patch, from tinyconfig merged with our fragment (`kernel config`
prints it), built once and reused.  With --source TREE: your tree, never patched; by
default built out of tree (O= under the cache) from tinyconfig + the fragment, which needs a
clean tree (never configured in place: Kbuild refuses otherwise, and this command says
so first); --in-place builds in TREE itself instead, starting from its own .config (the
fragment merged in, the options it turned off listed) and reusing its objects.
--config FILE starts from FILE instead of tinyconfig (or instead of TREE's .config).
Progress every 15 s; on failure the end of the build log."""
PATCH_HELP = "print the kvm_pvm compatibility patch (only for hosts whose /dev/kvm is kvm_pvm)"
PATCH_DESCRIPTION = """\
Print the guest-kernel patch that hosts whose /dev/kvm is served by kvm_pvm need (check:
/sys/module/kvm_pvm exists): there, guest kernel code is emulated and int3, fwait and
SYSCALL misbehave.  The patch changes nothing unless the guest's command line has
kvm_pvm_quirks, which the launcher adds only on such hosts.  Apply it to your tree once,
before building: `lguest-harness kernel patch | patch -p1` in the tree.  On other hosts (a
normal KVM) you do not need it.  `kernel build` without --source applies it itself."""


def configure(parser) -> None:
    sub = parser.add_subparsers(dest="kernel_command", metavar="ACTION", required=True)
    build = sub.add_parser("build", help=BUILD_HELP, description=BUILD_DESCRIPTION,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    build.add_argument("--source", type=Path, help="kernel tree or tarball (default: Debian's linux-source-6.1)")
    build.add_argument("--in-place", action="store_true",
                       help="build in the --source tree itself, from its .config (default: out of tree)")
    build.add_argument("--config", type=Path, metavar="FILE",
                       help="start from this .config instead of tinyconfig (the fragment is merged into it)")
    build.add_argument("--jobs", "-j", type=int, help="parallel make jobs (default: all cores)")
    cfg = sub.add_parser("config", help="print the config fragment, or merge it into a tree's .config",
                         description="Print the config fragment (what a test guest kernel needs on and off), "
                                     "or merge it into TREE/.config and say which options it turned off.")
    cfg.add_argument("--merge", type=Path, metavar="TREE", help="kernel tree whose .config to merge into")
    sub.add_parser("patch", help=PATCH_HELP, description=PATCH_DESCRIPTION,
                   formatter_class=argparse.RawDescriptionHelpFormatter)


def run(args) -> int:
    try:
        if args.kernel_command == "build":
            build = ensure_kernel(args.source, jobs=args.jobs, config=args.config, in_place=args.in_place)
            print(f"vmlinux    {build.vmlinux}\nbzImage    {build.bzimage}\n"
                  f"System.map {build.system_map}\nrelease    {build.release}")
        elif args.kernel_command == "config":
            return _config_command(args.merge)
        else:
            sys.stdout.write(COMPAT_PATCH.read_text())
    except KernelBuildError as err:
        print(f"lguest-harness kernel: {err}", file=sys.stderr)
        return 1
    return 0


def _config_command(tree: Path | None) -> int:
    if tree is None:
        sys.stdout.write(FRAGMENT.read_text())
        return 0
    config = tree / ".config"
    if not config.exists():
        raise KernelBuildError(f"{config} does not exist: run `make tinyconfig` (or your defconfig) first")
    before = config.read_text(errors="replace")
    with open(os.devnull, "w") as sink:
        merge = subprocess.run([str(tree / "scripts/kconfig/merge_config.sh"), "-m", str(config), str(FRAGMENT)],
                               cwd=tree, stdout=sink)
        if merge.returncode or subprocess.run(["make", "-C", str(tree), "olddefconfig"], stdout=sink).returncode:
            raise KernelBuildError(f"merging the fragment into {config} failed")
    wrong = config_mismatches(config.read_text(), fragment_options())
    for line in wrong:
        print(f"warning: {line}", file=sys.stderr)
    print(f"merged {FRAGMENT.name} into {config}")
    report_turned_off(turned_off(before, config.read_text()), str(config), print)
    return 0
