"""The /dev/lguest protocol, byte for byte: requests written, preads and what their errors mean."""
import errno
import os
import struct
import threading
import time
from types import SimpleNamespace

import pytest

from harness.fakes.lguest_host import FakeLguestHost, GuestOptions
from launcher.errors import HypervisorError
from launcher.hypervisor import backend_class
from launcher.hypervisor.base import BootSpec, Notify, Outcome, Stopped
from launcher.hypervisor.errors import BackendUnavailable, NotInitialized
from launcher.hypervisor.lguest import (
    ILP32, LP64, LguestBackend, LguestRunFailed, WordDoesNotFit, open_dev_lguest, outcome_of,
)
from launcher.loader import HardwareSubarch, KernelKind, LoadFlags
from launcher.memory import GuestMemory

ENTRY = 0x100000


class Recorder:
    """A /dev/lguest that records writes and answers preads from a script."""

    def __init__(self, reads=()):
        self.writes, self.preads = [], []
        self.reads = list(reads)
        self.closed = False
        self.refuse = {}

    def write(self, data):
        self.writes.append(bytes(data))
        err = self.refuse.get(struct.unpack_from("<I", data)[0])
        if err:
            raise OSError(err, os.strerror(err))
        return len(data)

    def pread(self, size, offset):
        self.preads.append((size, offset))
        answer = self.reads.pop(0)
        if isinstance(answer, int):
            raise OSError(answer, os.strerror(answer))
        if callable(answer):
            return answer()
        return answer

    def close(self):
        self.closed = True


def backend(file, abi=LP64, base=0x7F0000000000, size=8 << 20):
    memory = SimpleNamespace(host_address=base, size=size)
    return LguestBackend(memory, ram_size=size - (1 << 20), opener=lambda path: file, abi=abi)


def boot(b, entry=ENTRY):
    b.initialize(BootSpec(entry, 0, KernelKind.ELF32))


def test_word_sizes():
    assert ILP32.pack(0, 0x40000000, 0x800, ENTRY) == struct.pack("<4I", 0, 0x40000000, 0x800, ENTRY)
    assert LP64.pack(2, 5) == struct.pack("<2Q", 2, 5)
    with pytest.raises(WordDoesNotFit, match="does not fit the host's 4-byte unsigned long"):
        ILP32.pack(1 << 32)


@pytest.mark.parametrize("abi,fmt", [(ILP32, "<I"), (LP64, "<Q")])
def test_each_request_byte_for_byte(abi, fmt):
    file = Recorder()
    b = backend(file, abi, base=0x40000000)
    b.set_guest_limit(7 << 20)
    boot(b)
    b.raise_interrupt(3)
    b.attach_eventfd(0x701000, 9)
    b._run_thread = threading.get_ident()
    b.request_stop(Outcome.TIMEOUT)
    w = lambda *words: b"".join(struct.pack(fmt, x) for x in words)  # noqa: E731
    assert file.writes == [w(0, 0x40000000, (7 << 20) // 4096, ENTRY), w(2, 3), w(4, 0x701000, 9), w(3, 1)]


def test_pread_is_one_word_at_the_cpu_offset():
    file = Recorder([struct.pack("<Q", 0x1234)])
    b = backend(file)
    boot(b)
    assert b.run() == Notify(0x1234)
    assert file.preads == [(8, 0)]


@pytest.mark.parametrize("reason,outcome", [
    ("CRASH: Power down", Outcome.POWER_OFF),
    ("CRASH: Kernel panic - not syncing: VFS", Outcome.PANIC),
    ("Bad address 0xdeadbeef", Outcome.GUEST_CRASH),
])
def test_enoent_then_the_reason(reason, outcome):
    file = Recorder([errno.ENOENT, reason.encode() + b"\0junk"])
    b = backend(file)
    boot(b)
    assert b.run() == Stopped(outcome, reason)
    assert file.preads == [(8, 0), (1023, 0)]
    assert outcome_of(reason) is outcome


def test_erestart_is_a_reboot_and_eagain_retries():
    file = Recorder([errno.EAGAIN, errno.EINTR, errno.ERESTART])
    b = backend(file)
    boot(b)
    assert b.run().outcome is Outcome.REBOOT


def test_other_errors_are_named():
    file = Recorder([errno.EFAULT])
    b = backend(file)
    boot(b)
    with pytest.raises(LguestRunFailed, match="running the guest failed: pread on /dev/lguest: Bad address"):
        b.run()


def test_requests_before_initialize_and_entry_outside():
    b = backend(Recorder())
    with pytest.raises(NotInitialized):
        b.raise_interrupt(1)
    with pytest.raises(NotInitialized):
        b.run()
    with pytest.raises(HypervisorError, match=r"entry 0x800000 is outside the guest \(0..0x800000\)"):
        boot(b, 8 << 20)


def test_deadline_breaks_out_with_lhreq_break():
    host_break = threading.Event()

    class Blocking(Recorder):
        def write(self, data):
            super().write(data)
            if struct.unpack_from("<Q", data)[0] == 3:
                host_break.set()
            return len(data)

    file = Blocking([lambda: (host_break.wait(5), (_ for _ in ()).throw(OSError(errno.EAGAIN, "break")))[1]])
    b = backend(file)
    boot(b)
    assert b.run(time.monotonic() + 0.05).outcome is Outcome.TIMEOUT


def test_host_without_lhreq_break_gets_a_signal():
    file = Recorder([lambda: time.sleep(5) or b""])
    file.refuse[3] = errno.EINVAL      # 2.6.32+ hosts refuse LHREQ_BREAK
    b = backend(file)
    boot(b)
    started = time.monotonic()
    assert b.run(time.monotonic() + 0.05).outcome is Outcome.TIMEOUT
    assert time.monotonic() - started < 2


def test_layout_is_lguests():
    b = backend(Recorder(), size=9 << 20)
    layout = b.boot_layout()
    assert (layout.boot_params, layout.cmdline, layout.version) == (0, 0x1000, 0x207)
    assert layout.hardware_subarch is HardwareSubarch.LGUEST and layout.loadflags == LoadFlags.KEEP_SEGMENTS
    assert [(e.addr, e.size) for e in layout.e820] == [(0, 8 << 20)] and layout.initrd_max_end == 8 << 20
    assert not layout.prefer_elf


def test_missing_device_file_says_so(tmp_path):
    with pytest.raises(BackendUnavailable, match="is the lg module loaded"):
        open_dev_lguest(str(tmp_path / "lguest"))


def test_registry_knows_lguest_and_its_bus():
    from launcher.transports.lguest_bus import LguestBus
    assert backend_class("lguest") is LguestBackend and LguestBackend.bus is LguestBus


# -- the fake host refuses what the real one would ------------------------------------------------

@pytest.fixture
def memory():
    with GuestMemory(2 << 20) as mem:
        yield mem


def test_fake_host_checks_every_field(memory):
    host = FakeLguestHost(memory, abi=LP64, options=GuestOptions())
    with pytest.raises(OSError) as info:
        host.write(LP64.pack(2, 1))
    assert info.value.errno == errno.EINVAL and "before LHREQ_INITIALIZE" in host.violations[-1]
    for words, message in [
        ((0, memory.host_address + 4096, 512, ENTRY), "is not the guest memory's host address"),
        ((0, memory.host_address, 513, ENTRY), "pfn_limit 0x201 is outside"),
        ((0, memory.host_address, 256, 2 << 20), "is past pfn_limit"),
        ((0, memory.host_address, 512), "takes 4 words, got 3"),
        ((1, 0), "request 1 is not one the 2.6.39 host takes"),
    ]:
        with pytest.raises(OSError):
            host.write(LP64.pack(*words))
        assert message in host.violations[-1]
    with pytest.raises(OSError):
        host.write(b"\0" * 12)
    host.write(LP64.pack(0, memory.host_address, 512, ENTRY))
    for words, message in [((2, 32), "irq 32 >= LGUEST_IRQS"), ((4, 0x1000, 0), "fd 0 is not an eventfd"),
                           ((3, 0), "LHREQ_BREAK 0")]:
        with pytest.raises(OSError):
            host.write(LP64.pack(*words))
        assert message in host.violations[-1]
    with pytest.raises(OSError):
        host.pread(8, 1)
    assert "is not cpu 0" in host.violations[-1]
    with pytest.raises(OSError):
        host.pread(4, 0)
    assert "not one 8-byte word" in host.violations[-1]
