"""A hostile guest's NOTIFY: any address and any scribbling on the device page gives either
early-console output, a device status change, or BadNotify; nothing else escapes and nothing
is read outside the guest."""
from pathlib import Path
from tempfile import TemporaryDirectory

from hypothesis import given
from hypothesis import strategies as st

from harness.fakes.backends import MemoryConsole, MemoryDisk, SeededEntropy
from harness.fakes.lguest_host import register
from launcher import devspec as ds
from launcher.config import LaunchConfig
from launcher.launcher import HostSide, Launcher
from launcher.transports.lguest_bus import BadNotify
from tests.unit import tiny_guests as g

RAM = 2 << 20
KERNEL = g.elf(g.SPIN, 32)
register()


def make(workdir: Path):
    """A booted fake guest with a console, a block device over memory and an rng."""
    kernel = workdir / "vmlinux"
    kernel.write_bytes(KERNEL)
    disk = workdir / "disk"
    disk.write_bytes(bytes(8 * 512))
    backends = ds.HostBackends(console=MemoryConsole, block=lambda spec: MemoryDisk(8 * 512), entropy=SeededEntropy)
    config = LaunchConfig(mem_mb=RAM >> 20, kernel=kernel, backend="fake",
                          devices=(ds.BlockSpec(str(disk)), ds.RngSpec()))
    out = []
    vm = Launcher(config, console_out=out.append, host=HostSide(backends=backends))
    vm.open()
    return vm, out


@given(scribbles=st.lists(st.tuples(st.integers(0, 4095), st.binary(min_size=1, max_size=16)), max_size=8),
       addrs=st.lists(st.one_of(st.integers(0, 2**64 - 1), st.integers(RAM, RAM + 0x20000),
                                st.sampled_from([RAM, RAM + 5 + 16, RAM + 0x1000, RAM + 0x7000])),
                      min_size=1, max_size=12))
def test_hostile_notifies(scribbles, addrs):
    with TemporaryDirectory() as workdir:
        vm, out = make(Path(workdir))
        try:
            for offset, data in scribbles:
                vm.memory.write(RAM + offset, data[:4096 - offset])
            for addr in addrs:
                try:
                    vm.bus.notify(addr)
                except BadNotify:
                    assert addr >= vm.bus.guest_limit
            for chunk in out:
                assert len(chunk) <= vm.bus.guest_limit
        finally:
            vm.close()
