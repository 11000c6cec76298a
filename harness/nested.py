"""Ordinary KVM on any machine: run a command inside an L1 VM whose /dev/kvm is kvm_amd.

    python3 -m harness.nested [--timeout S] [--log FILE] -- python3 -m pytest tests/integration

L1 is QEMU with TCG emulating an AMD CPU with SVM and nested paging (`-cpu EPYC`), booting
Debian's stock kernel (the `linux-image-amd64` package, fetched with apt-get download and
unpacked into the cache) from a small busybox initramfs that loads kvm, kvm_amd, 9p and
overlay, mounts the host's / read-only over 9p under a tmpfs overlay, and runs the command
in the current directory as root: Python, the checkout and ~/.cache/lguest-harness are the
host's, so kernels and images are built on the host before L1 starts.  The command's exit
status becomes ours; L1's whole console goes to --log (kept as a CI artifact).
See shared/reference/kvm-host-notes.md, "Ordinary KVM".
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from elftools.elf.elffile import ELFFile

from harness.cpio import CpioWriter
from harness.initramfs import BUSYBOX
from harness.kernel import cache_root

HELP = "run a command inside an L1 VM with ordinary KVM (kvm_amd under QEMU TCG)"
META_PACKAGE = "linux-image-amd64"
# What L1 needs: the hypervisor, the host's files, and what the launcher's tests use there.
MODULES = ("kvm_amd", "9pnet_virtio", "9p", "overlay", "tun", "veth", "bridge", "virtio_pci")
EXIT_LINE = "lguest-harness-nested: exit "
EXIT_PATTERN = re.compile(rb"lguest-harness-nested: exit (\d+)")
QEMU = "qemu-system-x86_64"
L1_ATTEMPTS = 2
LOCKUP_SECONDS = 120
LOCKUP_POLL = 5.0
STALL_SECONDS = 600
LOCKUP_PATTERN = re.compile(rb"(?m)^\[ *\d+\.\d+\] (watchdog: BUG: soft lockup - CPU#\d+ stuck for (\d+)s!.*?)\r?$")


class NestedError(RuntimeError):
    """L1 could not be set up or did not report the command's exit status."""


# -- the stock kernel --------------------------------------------------------------------------
def _stock_package() -> str:
    out = subprocess.run(["apt-cache", "depends", META_PACKAGE], capture_output=True, text=True).stdout
    found = re.search(r"Depends: (linux-image-[0-9][^\s]*-amd64)\b", out)
    if not found:
        raise NestedError(f"apt-cache does not know {META_PACKAGE} (run apt-get update first)")
    return found.group(1)


def _unpacked(root: Path) -> tuple[Path, Path] | None:
    release = root.name.removeprefix("linux-image-")
    vmlinuz, modules = root / "boot" / f"vmlinuz-{release}", root / "lib" / "modules" / release
    return (vmlinuz, modules) if vmlinuz.exists() and modules.is_dir() else None


def ensure_stock_kernel(log=print) -> tuple[Path, Path]:
    """(vmlinuz, modules dir) of Debian's stock kernel, unpacked once into the cache (the one
    already there is reused: L1 only needs some stock kernel, not the newest)."""
    nested = cache_root() / "nested"
    for root in sorted(nested.glob("linux-image-*"), reverse=True):
        found = _unpacked(root)
        if found:
            return found
    try:
        package = _fetch(nested, _stock_package(), log)
    except (NestedError, subprocess.CalledProcessError):
        log("nested: refreshing apt's package lists")
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        package = _fetch(nested, _stock_package(), log)
    return _unpacked(nested / package)


def _fetch(nested: Path, package: str, log) -> str:
    work = nested / f".{package}.tmp"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        log(f"nested: fetching {package}")
        subprocess.run(["apt-get", "download", "-q", package], cwd=work, check=True, capture_output=True)
        deb = next(work.glob("*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(work / "root")], check=True)
        os.replace(work / "root", nested / package)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return package


# -- modules in load order ---------------------------------------------------------------------
def _module_depends(path: Path) -> list[str]:
    """The `depends=` names from a module's .modinfo section."""
    with open(path, "rb") as f:
        section = ELFFile(f).get_section_by_name(".modinfo")
        info = section.data() if section is not None else b""
    for field in info.split(b"\0"):
        if field.startswith(b"depends="):
            return [name for name in field[8:].decode().split(",") if name]
    return []


def modules_in_load_order(modules: Path, wanted=MODULES) -> list[Path]:
    """wanted and everything they depend on, dependencies first."""
    by_name = {p.name.split(".ko")[0].replace("-", "_"): p for p in modules.rglob("*.ko")}
    order: list[Path] = []

    def visit(name: str) -> None:
        key = name.replace("-", "_")
        if key not in by_name:
            raise NestedError(f"module {name} is not in {modules}")
        path = by_name.pop(key)
        for dep in _module_depends(path):
            if dep.replace("-", "_") in by_name:
                visit(dep)
        order.append(path)

    for name in wanted:
        if name.replace("-", "_") in by_name:
            visit(name)
    return order


# -- L1's initramfs ------------------------------------------------------------------------------
def l1_init(module_names: list[str], workdir: str, command: list[str], env: dict[str, str]) -> str:
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
    job = f"cd {shlex.quote(workdir)} && exec env {exports} {shlex.join(command)}"
    lines = [
        "#!/bin/sh",
        "export PATH=/bin",
        "/bin/busybox mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev",
        *(f"insmod /modules/{name} || echo 'nested: insmod {name} failed'" for name in module_names),
        "mkdir -p /host /rw /newroot",
        "mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /host",
        "mount -t tmpfs -o size=75% rw /rw && mkdir /rw/upper /rw/work",
        "mount -t overlay overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work /newroot",
        "mount -t proc proc /newroot/proc; mount -t sysfs sys /newroot/sys",
        "mount -t devtmpfs dev /newroot/dev; mkdir -p /newroot/dev/pts",
        "mount -t devpts -o newinstance,ptmxmode=0666 devpts /newroot/dev/pts",
        "ln -sf pts/ptmx /newroot/dev/ptmx",
        # /run fresh (the host's sockets and netns mounts mean nothing here); /tmp stays the
        # overlay's (writes land in tmpfs anyway), so a checkout under /tmp is still there.
        "mount -t tmpfs tmpfs /newroot/run",
        "echo \"nested: /dev/kvm is $(ls /sys/module | grep -E '^kvm_(amd|intel|pvm)$' | tr '\\n' ' ')\"",
        f"chroot /newroot /bin/sh -c {shlex.quote(job)}",
        f'echo "{EXIT_LINE}$?"',
        "poweroff -f",
    ]
    return "\n".join(lines) + "\n"


def build_l1_initramfs(dest: Path, modules: list[Path], init: str) -> Path:
    with open(dest, "wb") as out:
        cpio = CpioWriter(out)
        for name in ("bin", "proc", "sys", "dev", "modules"):
            cpio.directory(name)
        cpio.char_device("dev/console", 5, 1)
        cpio.file("bin/busybox", BUSYBOX.read_bytes(), perm=0o755)
        for applet in ("sh", "mount", "insmod", "mkdir", "chroot", "poweroff", "ls", "grep", "tr", "ln"):
            cpio.symlink(f"bin/{applet}", "busybox")
        for path in modules:
            cpio.file(f"modules/{path.name}", path.read_bytes())
        cpio.file("init", init.encode(), perm=0o755)
        cpio.close()
    return dest


# -- running L1 ---------------------------------------------------------------------------------------
def qemu_argv(vmlinuz: Path, initrd: Path, *, cpus: int, mem_mb: int) -> list[str]:
    return [QEMU, "-accel", "tcg,thread=multi", "-cpu", "EPYC", "-smp", str(cpus), "-m", str(mem_mb),
            "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
            "-kernel", str(vmlinuz), "-initrd", str(initrd),
            "-append", "console=ttyS0 panic=-1 quiet loglevel=4 kvm_amd.nested=1",
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"]


def run_nested(command: list[str], *, log_path: Path, timeout: float, cpus: int = 2, mem_mb: int = 6144,
               log=print) -> int:
    if shutil.which(QEMU) is None:
        raise NestedError(f"{QEMU} is missing: apt-get install qemu-system-x86")
    vmlinuz, modules_dir = ensure_stock_kernel(log)
    modules = modules_in_load_order(modules_dir)
    env = {key: os.environ[key] for key in ("PATH", "HOME", "CI", "PYTHONPATH", "HYPOTHESIS_PROFILE",
                                            "LGUEST_HARNESS_CACHE") if key in os.environ}
    env["LGUEST_HARNESS_NESTED"] = "1"
    initrd = log_path.with_suffix(".cpio")
    build_l1_initramfs(initrd, modules, l1_init([p.name for p in modules], os.getcwd(), command, env))
    log(f"nested: L1 = {QEMU} -accel tcg -cpu EPYC, {vmlinuz.name}, {len(modules)} modules; console: {log_path}")
    argv = qemu_argv(vmlinuz, initrd, cpus=cpus, mem_mb=mem_mb)
    started = _run_attempts(argv, log_path, time.monotonic() + timeout, log)
    initrd.unlink(missing_ok=True)
    found = EXIT_PATTERN.findall(log_path.read_bytes())
    if not found or int(found[-1]):
        _show_tail(log_path, log)
    if not found:
        raise NestedError(f"L1 ended without reporting the command's exit status (console: {log_path})")
    log(f"nested: L1 ran {time.monotonic() - started:.0f} s, the command exited {int(found[-1])}")
    return int(found[-1])


def _run_attempts(argv: list[str], log_path: Path, deadline: float, log) -> float:
    """Run L1 until one run ends by itself; a run whose own kernel locked up or fell silent is
    run once more (the budget is shared, so CI's limit holds).  Returns the last run's start."""
    for attempt in range(1, L1_ATTEMPTS + 1):
        started = time.monotonic()
        try:
            _run_l1(argv, log_path, deadline - started)
            return started
        except L1Stuck as stuck:
            _show_tail(log_path, log)
            if attempt == L1_ATTEMPTS:
                raise NestedError(f"{stuck} (twice; console: {log_path})") from None
            log(f"nested: {stuck} -- starting L1 once more "
                f"(the first console is kept as {_keep_first(log_path).name})")
        except NestedError:
            _show_tail(log_path, log)
            raise
    raise AssertionError("unreachable")


class L1Stuck(NestedError):
    """L1 stopped making progress: run it once more."""


class L1LockedUp(L1Stuck):
    """A CPU stuck for minutes in L1's own kernel under QEMU TCG (not a test's doing)."""


class L1Silent(L1Stuck):
    """L1's console did not move for STALL_SECONDS (pytest prints each test's outcome)."""


def _run_l1(argv: list[str], log_path: Path, timeout: float) -> None:
    """Run L1 to its end, watching its console: a CPU stuck for minutes in L1's kernel (seen
    in CI: both vCPUs stuck from L1's second minute on, for good) or a console silent for
    STALL_SECONDS ends the run at once."""
    deadline = time.monotonic() + timeout
    with open(log_path, "wb") as console:
        qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT)
    size, moved = 0, time.monotonic()
    try:
        while qemu.poll() is None:
            now = time.monotonic()
            if now > deadline:
                raise NestedError(f"L1 did not finish within {timeout:.0f} s (console: {log_path})")
            text = log_path.read_bytes()
            stuck = l1_lockup(text)
            if stuck:
                raise L1LockedUp(f"L1's kernel locked up ({stuck})")
            if len(text) != size:
                size, moved = len(text), now
            elif now - moved > STALL_SECONDS:
                raise L1Silent(f"L1's console has not moved for {now - moved:.0f} s")
            time.sleep(LOCKUP_POLL)
    finally:
        if qemu.poll() is None:
            qemu.kill()
            qemu.wait()


def l1_lockup(console: bytes) -> str | None:
    """The first report of an L1 CPU stuck for LOCKUP_SECONDS or more (a passing stall under
    load reports 20-30 s and recovers).  Only L1 kernel lines count: they start the line with
    their timestamp, while a guest's console shows up inside pytest's reports."""
    for found in LOCKUP_PATTERN.finditer(console):
        if int(found.group(2)) >= LOCKUP_SECONDS:
            return found.group(1).decode(errors="replace")
    return None


def _keep_first(log_path: Path) -> Path:
    kept = log_path.with_name(f"{log_path.stem}-first-attempt{log_path.suffix}")
    shutil.copyfile(log_path, kept)
    return kept


def _show_tail(log_path: Path, log, lines: int = 80) -> None:
    """L1's last console lines (its kernel's emulated-CPU chatter left out): the failure's report."""
    text = log_path.read_bytes().decode("utf-8", "replace").splitlines()
    kept = [line for line in text if "Unhandled WRMSR" not in line and "TCG doesn't support" not in line]
    log("nested: the end of L1's console:\n" + "\n".join(kept[-lines:]))


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=float, default=2400, help="give up on L1 after this long (s)")
    parser.add_argument("--log", type=Path, default=Path("nested-l1-console.log"), help="L1's console log")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--mem", type=int, default=6144, metavar="MB")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")


def run(args) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("lguest-harness nested: give a command after --", file=sys.stderr)
        return 2
    try:
        return run_nested(command, log_path=args.log.resolve(), timeout=args.timeout, cpus=args.cpus,
                          mem_mb=args.mem, log=lambda m: print(m, file=sys.stderr, flush=True))
    except (NestedError, subprocess.CalledProcessError, OSError) as err:
        print(f"lguest-harness nested: {err}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m harness.nested", description=HELP)
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
