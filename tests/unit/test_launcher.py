"""One life cycle for every backend: from a LaunchConfig to a stopped, closed guest through the
Python API, on kvm (a tiny real guest), fake (the scripted lguest guest) and lguest (the real
/dev/lguest protocol code over the fake host's device file)."""
import os

import pytest

from harness.fakes.lguest_host import BOOT_ENV, FakeLguestHost, GuestOptions, register
from launcher.config import LaunchConfig, UsageError
from launcher.hypervisor.base import Outcome
from launcher.launcher import HostSide, Launcher
from launcher.transports.bus import Report
from tests.unit import tiny_guests as g

register()
GREETING = b"hello through the life cycle\n"


@pytest.fixture(autouse=True)
def first_boot(monkeypatch):
    monkeypatch.setenv(BOOT_ENV, "0")


@pytest.fixture
def kernel(tmp_path):
    path = tmp_path / "vmlinux"
    path.write_bytes(g.elf(g.say(GREETING) + g.RESET + g.SPIN))
    return path


def _lguest_over_the_fake_device_file(vm_holder: list) -> dict:
    """LguestBackend itself, its /dev/lguest opened on a fake host over the launcher's memory."""
    def opener(path):
        vm_holder[0].fake_host = FakeLguestHost(vm_holder[0].memory, options=GuestOptions(timeout=5))
        return vm_holder[0].fake_host.open(path)
    return {"opener": opener}


@pytest.mark.parametrize("backend,outcome,expected", [
    pytest.param("kvm", Outcome.REBOOT, GREETING, marks=pytest.mark.kvm),
    ("fake", Outcome.POWER_OFF, b"fake lguest guest: console ok\n"),
    ("lguest", Outcome.POWER_OFF, b"fake lguest guest: console ok\n"),
])
def test_config_to_a_stopped_guest_on_every_backend(backend, outcome, expected, kernel):
    received, said, holder = [], [], [None]
    options = _lguest_over_the_fake_device_file(holder) if backend == "lguest" else {}
    config = LaunchConfig(mem_mb=4, kernel=kernel, kernel_args=("quiet",), backend=backend)
    vm = Launcher(config, console_out=received.append, report=Report(say=said.append),
                  host=HostSide(backend_options=options))
    holder[0] = vm
    with vm:
        assert vm.memory is not None and vm.bus is not None and vm.load_result.entry
        stopped = vm.run()
    assert stopped.outcome is outcome, stopped.detail
    assert expected in b"".join(received)
    assert vm.bus is None and vm.devices == []          # closed, devices first
    assert any(line.startswith("command line: quiet") for line in said)


def test_console_input_from_the_caller_reaches_the_guest(kernel):
    received = []
    config = LaunchConfig(mem_mb=4, kernel=kernel, backend="fake")
    host = HostSide(backend_options={"options": GuestOptions(console_rx=True, timeout=5)})
    with Launcher(config, console_out=received.append, host=host) as vm:
        assert vm.send_console_input(b"typed") == 5
        assert vm.run().outcome is Outcome.POWER_OFF
    assert b"fake lguest guest: got typed\n" in b"".join(received)


def test_a_failing_step_still_closes_what_was_opened(tmp_path):
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"#!/bin/sh\n" * 100)
    vm = Launcher(LaunchConfig(mem_mb=4, kernel=kernel, backend="fake"), console_out=lambda data: None)
    with pytest.raises(Exception, match="neither an ELF vmlinux"):
        with vm:
            pass
    assert vm.bus is None and vm.devices == [] and vm.memory.closed


@pytest.mark.parametrize("fields,message", [
    ({"mem_mb": 1}, "MEM_MB must be between 2 and 3072, not 1"),
    ({"timeout": 0}, "--timeout must be positive"),
    ({"hvc": "tty"}, "--hvc must be one of pty, stdio, none"),
    ({"backend": "xen"}, "no hypervisor backend named 'xen'"),
    ({"username": "no-such-user-here"}, "--username=no-such-user-here: no such user"),
    ({"chroot": "/nonexistent/dir"}, "--chroot=/nonexistent/dir: no such directory"),
])
def test_config_refuses_bad_values_before_anything_starts(fields, message, kernel):
    with pytest.raises(Exception, match=message):
        LaunchConfig(**{"mem_mb": 4, "kernel": kernel, "backend": "fake", **fields})


def test_config_is_hashable_and_normalised(kernel):
    one = LaunchConfig(mem_mb=4, kernel=str(kernel), kernel_args=["a"], backend="fake")
    two = LaunchConfig(mem_mb=4, kernel=kernel, kernel_args=("a",), backend="fake")
    assert one == two and hash(one) == hash(two)
    assert isinstance(UsageError("x"), Exception) and os.path.exists(one.kernel)
