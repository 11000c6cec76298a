"""A bounded soak (issue 16): many boot/poweroff cycles in one process through the Python API,
on the fake backend and (marked kvm) a few tiny real guests, and the test process's fds,
threads and resident memory must not grow beyond a small bound after a warm-up."""
import gc
import os
import threading

import pytest

from harness.fakes.lguest_host import BOOT_ENV, register
from launcher.config import LaunchConfig
from launcher.hypervisor.base import Outcome
from launcher.launcher import Launcher
from tests.unit import tiny_guests as g

register()

FAKE_CYCLES, KVM_CYCLES, WARMUP = 100, 3, 3
MAX_FD_GROWTH, MAX_THREAD_GROWTH = 0, 0
MAX_RSS_GROWTH = 8 << 20        # allocator noise, not a leak: one guest maps 4 MiB


@pytest.fixture(autouse=True)
def first_boot(monkeypatch):
    monkeypatch.setenv(BOOT_ENV, "0")


def usage() -> tuple[int, int, int]:
    gc.collect()
    fds = len(os.listdir("/proc/self/fd"))
    with open("/proc/self/statm") as statm:
        rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return fds, threading.active_count(), rss


def soak(kernel, backend: str, cycles: int, outcome: Outcome) -> tuple[int, int, int]:
    config = LaunchConfig(mem_mb=4, kernel=kernel, backend=backend)

    def cycle():
        with Launcher(config, console_out=lambda data: None) as vm:
            stopped = vm.run()
        assert stopped.outcome is outcome, stopped.detail

    for _ in range(WARMUP):
        cycle()
    before = usage()
    for _ in range(cycles):
        cycle()
    after = usage()
    growth = tuple(b - a for a, b in zip(before, after))
    print(f"{backend}: {cycles} cycles, fd/thread/RSS growth {growth}")
    assert growth[0] <= MAX_FD_GROWTH, f"fds grew by {growth[0]} over {cycles} guests"
    assert growth[1] <= MAX_THREAD_GROWTH, f"threads grew by {growth[1]} over {cycles} guests"
    assert growth[2] <= MAX_RSS_GROWTH, f"RSS grew by {growth[2]} bytes over {cycles} guests"
    return growth


@pytest.fixture
def kernel(tmp_path):
    path = tmp_path / "vmlinux"
    path.write_bytes(g.elf(g.say(b"soak\n") + g.RESET + g.SPIN))
    return path


def test_fake_backend_boot_poweroff_cycles_do_not_leak(kernel):
    soak(kernel, "fake", FAKE_CYCLES, Outcome.POWER_OFF)


@pytest.mark.kvm
def test_kvm_tiny_guest_cycles_do_not_leak(kernel):
    soak(kernel, "kvm", KVM_CYCLES, Outcome.REBOOT)
