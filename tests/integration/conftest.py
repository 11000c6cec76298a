"""Real guests straight from `lguest-harness boot`: the recipe kernel and initramfs (session
fixtures, cached by hash on disk) and launcher_factory, which owns every launcher it
spawns and checks none survives (after Firecracker's microvm_factory).  Failures quote
the console tail.  (harness.plugin's guest fixtures sit on top of the same command.)"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pexpect
import pytest

from harness.initramfs import build_initramfs
from harness.kernel import ensure_kernel

BOOT_TIMEOUT = 240     # a boot is ~25 s on a kvm_pvm host; generous for a loaded CI machine
COMMAND_TIMEOUT = 60   # fork+exec costs ~1 s there
RUN_TIMEOUT = 600      # the launcher's own bound, above everything a test waits for
MEM_MB = 96


@pytest.fixture(scope="session")
def kernel():
    return ensure_kernel(log=lambda msg: print(msg, file=sys.stderr, flush=True))


@pytest.fixture(scope="session")
def initramfs(tmp_path_factory):
    return build_initramfs(tmp_path_factory.mktemp("initramfs") / "initramfs.cpio")


class Guest:
    """One `lguest-harness boot` under pexpect; `console` is the pexpect child."""

    def __init__(self, console: pexpect.spawn, argv: list[str]):
        self.console, self.argv = console, argv

    def expect(self, pattern, timeout=COMMAND_TIMEOUT):
        try:
            return self.console.expect(pattern, timeout=timeout)
        except (pexpect.TIMEOUT, pexpect.EOF) as exc:
            tail = (self.console.before or "")[-2000:]
            raise AssertionError(f"waiting for {pattern!r}: {type(exc).__name__}; console tail:\n{tail}") from None

    def run(self, command: str, answer: str, timeout=COMMAND_TIMEOUT) -> str:
        self.console.sendline(command)
        self.expect(answer, timeout)
        return self.console.match.group(0)

    def wait_exit(self, timeout=COMMAND_TIMEOUT) -> int:
        self.expect(pexpect.EOF, timeout)
        self.console.close()
        return self.console.exitstatus


@pytest.fixture(scope="module")
def launcher_factory(kernel, initramfs):
    guests: list[Guest] = []

    def boot(*kernel_args: str, mem_mb: int = MEM_MB, initrd: Path | None = None, kernel_path=None) -> Guest:
        argv = ["boot", f"--timeout={RUN_TIMEOUT}", f"--initrd={initrd or initramfs}", str(mem_mb),
                str(kernel_path or kernel.vmlinux), "panic=-1", *kernel_args]
        console = pexpect.spawn(sys.executable, ["-m", "harness.cli", *argv], encoding="utf-8",
                                codec_errors="replace", timeout=BOOT_TIMEOUT, env=os.environ.copy(),
                                dimensions=(50, 200))
        guest = Guest(console, argv)
        guests.append(guest)
        return guest

    yield boot
    for guest in guests:
        if guest.console.isalive():
            guest.console.terminate(force=True)
        assert not guest.console.isalive(), f"launcher {guest.argv} survived termination"
