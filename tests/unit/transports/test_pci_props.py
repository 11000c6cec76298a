"""virtio-pci (4.1) as a hypothesis state machine: a driver that mixes Linux's sequence with
arbitrary configuration cycles (any port of 0xcf8-0xcff, any width, any register, the BAR
included) and arbitrary BAR accesses never gets anything but counted rule breaks; identity
registers never change, the BAR keeps its flags and size, and decoding follows COMMAND."""
import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from harness.fakes.backends import MemoryDisk
from harness.fakes.driver import DriverError
from harness.fakes.pci_driver import PciDriver
from launcher.devices.base import STATUS_TRANSITIONS, DeviceStatus
from launcher.devices.block import BlockDevice
from launcher.memory import GuestMemory
from launcher.transports.pci import BAR_SIZE, VirtioPciTransport
from launcher.transports.pci_config import Command, PciReg
from launcher.transports.pci_host import ENABLE, PciHost

MEM = 1 << 20
BAR = 0xE000_0000


class PciMachine(RuleBasedStateMachine):
    @initialize()
    def build(self):
        self.memory = GuestMemory(MEM)
        self.device = BlockDevice(MemoryDisk(32 * 512), strict=False)
        self.remaps = []
        self.t = VirtioPciTransport(self.device, self.memory, bar_address=BAR, irq=5, strict=False,
                                    on_remap=lambda old, new: self.remaps.append((old, new)))
        self.host = PciHost(strict=False)
        self.drv = PciDriver(self.host, self.host.add(self.t), self.t, self.memory, base=0x10000, region=0x20000)
        self.ring = None

    @rule()
    def linux_init(self):
        self.drv.next_region = 0x10000
        try:
            self.drv.probe()
            self.drv.negotiate()
            self.ring = self.drv.setup_queue(0, 16)
            self.drv.driver_ok()
        except DriverError:
            self.ring = None

    @precondition(lambda self: self.ring is not None and self.device.active)
    @rule(sector=st.integers(0, 40))
    def block_read(self, sector):
        if self.ring.num_free >= 3:
            self.ring.add([bytes(8) + sector.to_bytes(8, "little")], [512, 1])
        self.ring.kick()

    @rule()
    def interrupt_handler(self):
        if self.drv.caps:
            self.drv.interrupt()

    @rule(reg=st.integers(0, 0xFF), port=st.integers(0, 7), size=st.sampled_from([1, 2, 4, 8]),
          value=st.one_of(st.integers(0, 0xFFFFFFFF), st.sampled_from([0, 0xFFFFFFFF, 0x6, 0xE0000000])),
          write=st.booleans(), extended=st.integers(0, 0x7F))
    def config_cycle(self, reg, port, size, value, write, extended):
        self.host.write(0, 4, ENABLE | extended << 24 | self.drv.slot << 11 | reg & 0xFC)
        if write:
            self.host.write(port, size, value)
            self.ring = None if reg == PciReg.COMMAND else self.ring
        else:
            assert 0 <= self.host.read(port, size) < 1 << (8 * size)

    @rule(offset=st.integers(0, BAR_SIZE + 0x10), size=st.sampled_from([1, 2, 4, 8]),
          value=st.integers(0, 0xFFFFFFFF), write=st.booleans())
    def bar_access(self, offset, size, value, write):
        if write:
            self.t.write(offset, size, value)
        else:
            assert 0 <= self.t.read(offset, size) < 1 << 64

    @invariant()
    def identity_and_bar_shape(self):
        if hasattr(self, "t"):
            assert self.t.config.get(PciReg.VENDOR_ID, 2) == 0x1AF4
            assert self.t.config.get(PciReg.DEVICE_ID, 2) == 0x1042
            assert self.t.config.get(PciReg.BAR0, 4) & 0xF == 0x4
            assert self.t.config.bar64_address(0) % BAR_SIZE == 0

    @invariant()
    def decoding_follows_command(self):
        if hasattr(self, "t"):
            enabled = self.t.config.command & Command.MEMORY_SPACE
            assert self.t.mapped == (self.t.config.bar64_address(0) if enabled else None)
            assert all(old != new for old, new in self.remaps)

    @invariant()
    def status_is_reachable(self):
        if hasattr(self, "t"):
            assert self.device.status & ~DeviceStatus.DEVICE_NEEDS_RESET in STATUS_TRANSITIONS

    def teardown(self):
        if hasattr(self, "t"):
            self.t.close()
            self.memory.close()


TestPciMachine = PciMachine.TestCase
TestPciMachine.settings = settings(stateful_step_count=40, deadline=None)
