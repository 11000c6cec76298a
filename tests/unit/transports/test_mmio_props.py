"""virtio-mmio (4.2) as a hypothesis state machine: a driver that mixes Linux's well-behaved
sequence with arbitrary register accesses never gets anything but counted rule breaks, and the
register file keeps the spec's invariants after every step."""
import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from harness.fakes.backends import MemoryDisk
from harness.fakes.driver import DriverError
from harness.fakes.mmio_driver import MmioDriver
from launcher.devices.base import STATUS_TRANSITIONS, DeviceStatus
from launcher.devices.block import BlockDevice
from launcher.memory import GuestMemory
from launcher.transports.mmio import MAGIC_VALUE, MMIO_WINDOW, MmioReg, MmioTransport

MEM = 1 << 20
REGS = [int(r) for r in MmioReg]


class MmioMachine(RuleBasedStateMachine):
    @initialize()
    def build(self):
        self.memory = GuestMemory(MEM)
        self.interrupts = 0
        self.device = BlockDevice(MemoryDisk(32 * 512), strict=False)
        self.t = MmioTransport(self.device, self.memory, interrupt=self._irq, strict=False)
        self.drv = MmioDriver(self.t, self.memory, base=0x10000, region=0x20000)
        self.generation = 0
        self.ring = None

    def _irq(self):
        self.interrupts += 1

    # -- a well-behaved driver ------------------------------------------------------------------
    @rule(event_idx=st.booleans())
    def linux_init(self, event_idx):
        self.drv.next_region = 0x10000
        try:
            self.drv.probe()
            self.drv.negotiate(None if event_idx else ~(1 << 29))
            self.ring = self.drv.setup_queue(0, 16)
            self.drv.driver_ok()
        except DriverError:
            self.ring = None

    @precondition(lambda self: self.ring is not None and self.device.active)
    @rule(sector=st.integers(0, 40), kick=st.booleans())
    def block_read(self, sector, kick):
        if self.ring.num_free >= 3:
            self.ring.add([bytes(16)[:4] + bytes(4) + sector.to_bytes(8, "little")], [512, 1])
        if kick:
            self.ring.kick()
        else:
            self.ring.publish()

    @rule()
    def interrupt_handler(self):
        self.drv.interrupt()

    @rule()
    def reset(self):
        self.drv.reset()
        self.ring = None

    @rule()
    def config_change(self):
        self.t.config_changed()
        self.generation += 1

    # -- anything at all ------------------------------------------------------------------------
    @rule(offset=st.one_of(st.sampled_from(REGS), st.integers(0, MMIO_WINDOW - 1)),
          size=st.sampled_from([1, 2, 4, 8]))
    def raw_read(self, offset, size):
        value = self.t.read(offset, size)
        assert 0 <= value < 1 << (8 * size) or size == 8

    @rule(offset=st.one_of(st.sampled_from(REGS), st.integers(0, MMIO_WINDOW - 1)),
          size=st.sampled_from([1, 2, 4, 8]),
          value=st.one_of(st.integers(0, 0xFF), st.integers(0, 0xFFFFFFFF), st.sampled_from([0, 1, 0x80, 0xF])))
    def raw_write(self, offset, size, value):
        self.t.write(offset, size, value)
        if offset == MmioReg.STATUS and size == 4 and value & 0xFF == 0:
            self.ring = None

    # -- the spec's invariants ------------------------------------------------------------------
    @invariant()
    def identity(self):
        if hasattr(self, "t"):
            assert self.t.read(MmioReg.MAGIC_VALUE, 4) == MAGIC_VALUE
            assert self.t.read(MmioReg.VERSION, 4) == 2

    @invariant()
    def interrupt_status_has_only_defined_bits(self):
        if hasattr(self, "t"):
            assert self.t.interrupt_status & ~0x3 == 0
            assert self.t.config_generation == self.generation

    @invariant()
    def status_is_reachable(self):
        if hasattr(self, "t"):
            status = self.device.status & ~DeviceStatus.DEVICE_NEEDS_RESET
            assert status in STATUS_TRANSITIONS
            if self.device.active:
                assert status & DeviceStatus.DRIVER_OK

    @invariant()
    def ready_queues_are_valid(self):
        if hasattr(self, "t"):
            for queue in self.t.queues:
                if queue.ready:
                    assert 1 <= queue.num <= queue.num_max and queue.num & (queue.num - 1) == 0

    def teardown(self):
        if hasattr(self, "t"):
            self.t.close()
            self.memory.close()


TestMmioMachine = MmioMachine.TestCase
TestMmioMachine.settings = settings(stateful_step_count=40, deadline=None)
