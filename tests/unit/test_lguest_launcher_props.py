"""A hostile guest's NOTIFY: any address and any scribbling on the device page gives either
early-console output, a device status change, or BadNotify; nothing else escapes and nothing
is read outside the guest."""
from hypothesis import given
from hypothesis import strategies as st

from harness.fakes.backends import MemoryConsole, MemoryDisk, SeededEntropy
from harness.fakes.lguest_host import fake_backend
from launcher import devspec as ds
from launcher.devices.block import BlockDevice
from launcher.launcher import BadNotify, BootFiles, Launcher, lguest_memory
from tests.unit import tiny_guests as g

RAM = 2 << 20
KERNEL = g.elf(g.SPIN, 32)


def make():
    memory = lguest_memory(RAM)
    backend = fake_backend(memory, ram_size=RAM)
    devices = [ds.build_devices([ds.ConsoleSpec()], ds.HostBackends(console=MemoryConsole))[0],
               BlockDevice(MemoryDisk(8 * 512)),
               ds.build_devices([ds.RngSpec()], ds.HostBackends(entropy=SeededEntropy))[0]]
    out = []
    launcher = Launcher(memory, RAM, backend, devices, out=out.append)
    launcher.setup_devices()
    launcher.initialize(launcher.load(BootFiles(KERNEL)))
    return memory, launcher, out


@given(scribbles=st.lists(st.tuples(st.integers(0, 4095), st.binary(min_size=1, max_size=16)), max_size=8),
       addrs=st.lists(st.one_of(st.integers(0, 2**64 - 1), st.integers(RAM, RAM + 0x20000),
                                st.sampled_from([RAM, RAM + 5 + 16, RAM + 0x1000, RAM + 0x7000])),
                      min_size=1, max_size=12))
def test_hostile_notifies(scribbles, addrs):
    memory, launcher, out = make()
    try:
        for offset, data in scribbles:
            memory.write(RAM + offset, data[:4096 - offset])
        for addr in addrs:
            try:
                launcher.handle_notify(addr)
            except BadNotify:
                assert addr >= launcher.guest_limit
        for chunk in out:
            assert len(chunk) <= launcher.guest_limit
    finally:
        ds.close_devices(launcher.devices)
        launcher.backend.close()
        memory.close()
