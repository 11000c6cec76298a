"""The life cycle on the lguest bus, end to end against the fake lguest host (no kernel)."""
import struct

import pytest

from harness.fakes.backends import MemoryConsole, SeededEntropy, net_pair
from harness.fakes.guest_events import NotifyAddr
from harness.fakes.lguest_host import BOOT_ENV, FakeLguestGuest, GuestOptions, register
from launcher import devspec as ds
from launcher.config import LaunchConfig
from launcher.hypervisor.base import Outcome
from launcher.launcher import HostSide, Launcher
from launcher.loader.errors import InitrdTooLarge
from launcher.reexec import Reexec
from launcher.transports.bus import Report
from launcher.transports.lguest_bus import BadNotify, KernelOverlapsDevices, LguestBus
from launcher.transports.lguest_page import DEVICE_PAGES
from tests.unit import tiny_guests as g

RAM = 4 << 20
KERNEL = g.elf(g.SPIN, 32)
register()


class Rig:
    """The fake backend, devices over in-memory host sides (the disk is a real file)."""

    def __init__(self, tmp_path, flags=(), options=GuestOptions(timeout=3), guest_class=FakeLguestGuest):
        self.tmp_path = tmp_path
        self.console = MemoryConsole()
        self.net, self.peer = net_pair()
        self.entropy = SeededEntropy(7)
        backends = ds.HostBackends(console=lambda: self.console, net=lambda spec: self.net,
                                   entropy=lambda: self.entropy)
        self.specs = tuple(_spec(f, tmp_path) for f in flags)
        self.out, self.said, self.told, self.execs = [], [], [], []
        self.host_side = HostSide(backends=backends, strict=True,
                                  backend_options={"options": options, "guest_class": guest_class},
                                  reexec=Reexec(execv=lambda path, argv: self.execs.append(argv), argv=("again",),
                                                close_fds=False))
        self.vm: Launcher | None = None

    def boot(self, kernel=KERNEL, args=(), initrd=None):
        path = self.tmp_path / "vmlinux"
        path.write_bytes(kernel)
        config = LaunchConfig(mem_mb=RAM >> 20, kernel=path, kernel_args=tuple(args), initrd=initrd,
                              devices=self.specs, backend="fake")
        self.vm = Launcher(config, console_out=self.out.append, report=Report(self.said.append, self.told.append),
                           host=self.host_side)
        self.vm.open()
        return self.vm.load_result

    def run(self, **kw):
        self.boot(**kw)
        return self.vm.run()

    @property
    def memory(self):
        return self.vm.memory

    @property
    def host(self):
        return self.vm.backend.host

    @property
    def devices(self):
        return self.vm.devices

    def close(self):
        if self.vm is not None:
            self.vm.close()


def _spec(flag, tmp_path):
    if flag == "block":
        disk = tmp_path / "disk.img"
        disk.write_bytes(bytes(16 * 512))
        return ds.BlockSpec(str(disk))
    return {"net": ds.NetSpec(interface="10.0.0.1/8", mac=bytes.fromhex("020000000001")),
            "rng": ds.RngSpec()}[flag]


@pytest.fixture(autouse=True)
def first_boot(monkeypatch):
    monkeypatch.setenv(BOOT_ENV, "0")     # a restart bumps it; setenv's undo removes it again


@pytest.fixture
def rig(tmp_path):
    rigs = []

    def make(*flags, **kw):
        rigs.append(Rig(tmp_path, flags, **kw))
        return rigs[-1]
    yield make
    for r in rigs:
        r.close()


def test_full_run_console_block_net_rng(rig, tmp_path):
    r = rig("block", "net", "rng")
    stopped = r.run(args=["console=hvc0"])
    assert stopped.outcome is Outcome.POWER_OFF and stopped.detail == "CRASH: Power down"
    assert r.host.violations == []
    assert b"".join(r.out) == b"fake lguest guest: boot 0, 4 MiB\n"          # early console
    assert r.console.output == (b"fake lguest guest: hello through virtio-console\n"
                                b"fake lguest guest: console ok, block ok, net ok, rng ok\n")
    assert (tmp_path / "disk.img").read_bytes()[:41] == b"lguest-harness fake guest wrote sector 0\n"
    frame = r.peer.take(timeout=1)
    assert frame[10:24] == bytes.fromhex("ffffffffffff020000000001" "88b5")
    assert r.host.guest.results["rng"] == SeededEntropy.stream(7, 64)
    # Every queue's address got an eventfd, each exactly once: 2 console, 1 block, 2 net, 1 rng.
    queue_addrs = [q.addr for e in r.vm.bus.page.entries for q in e.queues]
    attached = [req[1] for req in r.host.requests if req[0] == "LHREQ_EVENTFD"]
    assert sorted(attached) == sorted(queue_addrs)
    assert "Device block OK: offered 04 02, accepted 00 02" in r.said


def test_initialize_words(rig):
    r = rig("rng")
    spec = r.boot()
    limit = RAM + 4096 * (1 + 3 + 3 + 3)      # device page, then console x2 and rng vrings
    assert r.host.requests[0] == ("LHREQ_INITIALIZE", r.memory.host_address, limit // 4096, spec.entry)
    assert r.host.writes[0] == struct.pack("<4Q", 0, r.memory.host_address, limit // 4096, 0x100000)


def test_boot_header_bytes(rig, tmp_path):
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"\x07" * 5000)
    r = rig()
    r.boot(args=["root=/dev/vda", "quiet"], initrd=initrd)
    zero = r.memory.read(0, 4096)
    u8, u16, u32 = (lambda off, f=f: struct.unpack_from(f, zero, off)[0] for f in "<B <H <I".split())
    assert u32(0x23C) == 1                              # hardware_subarch: lguest
    assert u8(0x211) == 0x40                            # loadflags: KEEP_SEGMENTS only
    assert u16(0x206) == 0x207                          # boot protocol 2.07
    assert u32(0x228) == 0x1000                         # cmd_line_ptr: right after the zero page
    assert u8(0x1E8) == 1                               # one e820 entry ...
    assert struct.unpack_from("<QQI", zero, 0x2D0) == (0, RAM, 1)   # ... RAM only, not the device pages
    assert struct.unpack_from("<QQI", zero, 0x2D0 + 20) == (0, 0, 0)
    image = RAM - 8192                                  # page aligned at the top of RAM
    assert (u32(0x218), u32(0x21C), u8(0x210)) == (image, 5000, 0xFF)
    assert r.memory.read(image, 5000) == b"\x07" * 5000
    assert r.memory.read(0x1000, 21) == b"root=/dev/vda quiet\0\0"


def test_initrd_larger_than_memory(rig, tmp_path):
    initrd = tmp_path / "initrd"
    initrd.write_bytes(bytes(RAM))
    with pytest.raises(InitrdTooLarge, match="does not fit"):
        rig().boot(initrd=initrd)


def test_kernel_reaching_into_the_device_pages(rig):
    kernel = g.make_elf(32, [(RAM - 0x1000, b"\x90", 0x2000)], entry=RAM - 0x1000)
    with pytest.raises(KernelOverlapsDevices, match=f"past the end of guest RAM {RAM:#x}"):
        rig().boot(kernel=kernel)


@pytest.mark.parametrize("options,outcome,detail", [
    (GuestOptions(end="die", reason="Bad address 0xdead"), Outcome.GUEST_CRASH, "Bad address 0xdead"),
    (GuestOptions(end="panic", reason="oops"), Outcome.PANIC, "CRASH: Kernel panic - not syncing: oops"),
    (GuestOptions(end="restart"), Outcome.REBOOT, "the guest asked for a restart (ERESTART)"),
])
def test_death_reasons(rig, options, outcome, detail):
    stopped = rig(options=options).run()
    assert (stopped.outcome, stopped.detail) == (outcome, detail)


def test_options_come_from_the_command_line(rig):
    r = rig(options=None)
    stopped = r.run(args=["fake.end=die", "fake.reason=from_the_cmdline"])
    assert stopped.detail == "from the cmdline"


class Hostile(FakeLguestGuest):
    def __init__(self, host, options):
        super().__init__(host, options)

    def run(self):
        self.memory.write(0x2000, b"hi\0")
        yield NotifyAddr(0x2000)
        yield NotifyAddr(self.host.initialized[1] * 4096 - 3)   # no NUL before the guest's end
        yield NotifyAddr(1 << 40)


def test_early_console_is_bounded_and_outside_is_refused(rig):
    r = rig(guest_class=Hostile)
    r.boot()
    limit = r.vm.bus.guest_limit
    r.memory.write(limit - 3, b"end")
    with pytest.raises(BadNotify, match=r"bad NOTIFY 0x10000000000: not a device's address and outside "
                                        rf"the guest \(0..{limit:#x}\)"):
        r.vm.run()
    assert r.out == [b"hi", b"end"]


def test_console_input_and_net_receive(rig):
    r = rig("net", options=GuestOptions(console_rx=True, net_rx=True, timeout=3))
    r.console.feed(b"typed")
    r.peer.send([memoryview(bytes(10) + b"\xaa" * 60)])
    assert r.run().outcome is Outcome.POWER_OFF
    assert r.host.guest.results["console_rx"] == b"typed"
    assert r.host.guest.results["net_rx"] == b"\xaa" * 60
    assert b"fake lguest guest: got typed\n" in r.console.output


def test_memory_layout_leaves_device_pages_above_ram():
    assert LguestBus.memory_size(RAM) == RAM + DEVICE_PAGES * 4096


# -- loader to launcher: what each kind of image becomes on the lguest bus ----------------------------

def test_bzimage_runs_its_own_decompressor_from_code32_start(rig):
    from launcher.loader import KernelKind
    from tests.unit.loader.images import make_bzimage
    image = make_bzimage(g.elf(g.SPIN, 32), code32_start=0x100000)
    r = rig()
    spec = r.boot(kernel=image)
    assert (spec.kind, spec.entry) == (KernelKind.BZIMAGE, 0x100000)   # not the extracted ELF
    assert r.memory.read(0x100000, 4) == b"\xf4" * 4                   # the protected-mode code at 1 MiB
    zero = r.memory.read(0, 4096)
    assert zero[0x1F1] == 0                # the original left the bzImage's setup header out of the zero page
    assert r.vm.run().outcome is Outcome.POWER_OFF


@pytest.mark.parametrize("bits,kind", [(32, "ELF32"), (64, "ELF64")])
def test_elf_entry_reaches_lhreq_initialize(rig, bits, kind):
    r = rig()
    r.boot(kernel=g.make_elf(bits, [(0x200000, b"\x90" * 16, 0x1000)], entry=0x200008))
    assert r.vm.load_result.kind.name == kind
    assert r.host.requests[0][3] == 0x200008
    assert r.memory.read(0x200000, 16) == b"\x90" * 16


def test_not_a_kernel_writes_nothing_to_the_guest(rig):
    from launcher.loader.errors import NotAKernel
    r = rig()
    with pytest.raises(NotAKernel):
        r.boot(kernel=b"#!/bin/sh\n" * 100)
    assert r.memory.read(0, 4096) == bytes(4096) and r.host.requests == []


def test_reset_and_probe_again_reuses_the_eventfds(rig, tmp_path):
    r = rig("block", "rng", options=GuestOptions(reprobe=True, timeout=3))
    assert r.run().outcome is Outcome.POWER_OFF, r.host.dead
    assert r.host.guest.results["reprobed"] == 3
    assert r.said.count("Resetting device block") == 1 and r.said.count("Device rng OK: offered, accepted") == 2
    attached = [req[1] for req in r.host.requests if req[0] == "LHREQ_EVENTFD"]
    assert len(attached) == len(set(attached)) == 2 + 1 + 1      # once per queue, never again
    assert r.console.output.count(b"hello through virtio-console") == 2
    assert all(d.active for d in r.devices)         # live again after the second DRIVER_OK


def test_failed_status_is_warned_and_stops_the_device(rig):
    r = rig("rng", options=GuestOptions(fail="rng", timeout=3))
    assert r.run().outcome is Outcome.POWER_OFF
    assert r.told == ["Device rng configuration FAILED"]
    assert not r.devices[1].active and r.devices[0].active
