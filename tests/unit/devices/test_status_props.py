"""A hypothesis state machine over driver status writes, feature writes, resets and traffic
(virtio 1.x 2.1 and 3.1.1), with the real service threads running underneath."""
import threading

from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from harness.fakes.backends import SeededEntropy
from harness.fakes.backends_bench import DeviceBench
from harness.fakes.driver import QueueFull
from launcher.devices.base import LEGACY_STATUS_TRANSITIONS, STATUS_TRANSITIONS, DeviceStatus
from launcher.devices.rng import RngDevice
from tests.unit.devices.test_base import ALL_STATUS, spec_allows

OFFERED = 0b1010_0101
OK, F, NEEDS_RESET = DeviceStatus.DRIVER_OK, DeviceStatus.FAILED, DeviceStatus.DEVICE_NEEDS_RESET


class DeviceStatusMachine(RuleBasedStateMachine):
    """Model: the status the spec says the device has, and how many writes it refused."""

    def __init__(self):
        super().__init__()
        self.legacy = False
        self.bench = None

    def _start(self, legacy):
        self.legacy = legacy
        device = RngDevice(SeededEntropy(3), offered=OFFERED, legacy=legacy, strict=False)
        self.bench = DeviceBench(device, threads=True)
        self.bench.device.memory = self.bench.memory
        self.bench.place_queues()
        self.model_status = 0
        self.model_refused = 0
        self.served = 0

    @rule(legacy=st.booleans())
    @precondition(lambda self: self.bench is None)
    def build(self, legacy):
        self._start(legacy)

    @rule(legacy_path=st.booleans())
    @precondition(lambda self: self.bench is not None)
    def advance(self, legacy_path):
        """A well-behaved driver's next step (3.1.1), or the legacy one (7.1)."""
        seq = [DeviceStatus.ACKNOWLEDGE, DeviceStatus.DRIVER]
        seq += [OK] if legacy_path else [DeviceStatus.FEATURES_OK, OK]
        for bit in seq:
            if not self.model_status & bit:
                self.write_status(self.model_status | bit)
                return

    @rule(value=st.one_of(st.sampled_from(ALL_STATUS), st.integers(0, 255)))
    @precondition(lambda self: self.bench is not None)
    def write_status(self, value):
        dev = self.bench.device
        new = value & ~NEEDS_RESET
        expect = spec_allows(self.model_status, new, self.legacy)
        if expect and new & ~self.model_status & DeviceStatus.FEATURES_OK:
            expect = not dev.accepted & ~OFFERED
        took = dev.set_status(value)
        assert took == expect, f"{self.model_status:#04x} -> {value:#04x}"
        if took:
            self.model_status = new
            if new == 0:
                self.bench.reset_rings()
                self.bench.place_queues()
        else:
            self.model_refused += 1

    @rule(features=st.integers(0, 0xFF))
    @precondition(lambda self: self.bench is not None)
    def write_features(self, features):
        took = self.bench.device.accept_features(features)
        assert took == (not features & ~OFFERED)

    @rule(size=st.integers(1, 64))
    @precondition(lambda self: self.bench is not None and self.bench.device.active)
    def post_buffer(self, size):
        drv = self.bench.driver(0)
        self.served += len(drv.reap())
        try:
            drv.add([], [size])
        except QueueFull:
            return
        drv.kick()

    @invariant()
    def status_matches_model(self):
        if self.bench is None:
            return
        dev = self.bench.device
        assert dev.status == self.model_status
        assert dev.metrics.status_refused == self.model_refused
        table = LEGACY_STATUS_TRANSITIONS if self.legacy else STATUS_TRANSITIONS
        assert dev.status in table

    @invariant()
    def threads_run_exactly_while_live(self):
        if self.bench is None:
            return
        dev = self.bench.device
        live = bool(dev.status & OK) and not dev.status & F
        assert dev.active == live
        assert len(self.bench.workers.threads) == (1 if live else 0)
        assert not dev.accepted & ~OFFERED
        assert self.bench.workers.errors == []

    def teardown(self):
        if self.bench is not None:
            self.bench.close()
            assert [t for t in threading.enumerate() if t.name.startswith("rng-")] == []


DeviceStatusMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30,
                                                 deadline=None)
TestDeviceStatus = DeviceStatusMachine.TestCase
