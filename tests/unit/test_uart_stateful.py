"""The 8250 against a small model: any interleaving of guest register accesses and host input.

Invariants (16550A datasheet / Linux 8250 driver expectations): IER reads back its low
nibble; LSR.DR is set exactly when input is waiting; THRE/TEMT are always set (the
transmitter is infinitely fast); IIR names the highest-priority enabled pending
interrupt; bytes reach the guest in order and output leaves in order.
"""
from collections import deque

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from launcher.uart import IIR_FIFO_BITS, RX_CAPACITY, Iir, Reg, Uart8250


class UartMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.out = bytearray()
        self.irqs = 0
        self.uart = Uart8250(out=self.out.extend, trigger=self._trigger)
        self.model_rx: deque[int] = deque()
        self.model_out = bytearray()
        self.ier = 0
        self.dlab = False
        self.loop = False

    def _trigger(self):
        self.irqs += 1

    @rule(data=st.binary(min_size=1, max_size=64))
    def host_input(self, data):
        accepted = self.uart.enqueue(data)
        assert accepted == min(len(data), RX_CAPACITY - len(self.model_rx))
        self.model_rx.extend(data[:accepted])

    @rule(value=st.integers(0, 255))
    def write_ier(self, value):
        self.uart.write_reg(Reg.IER, value)
        if not self.dlab:
            self.ier = value & 0x0F

    @rule(dlab=st.booleans())
    def write_lcr(self, dlab):
        self.uart.write_reg(Reg.LCR, 0x83 if dlab else 0x03)
        self.dlab = dlab

    @rule(loop=st.booleans())
    def write_mcr(self, loop):
        self.uart.write_reg(Reg.MCR, 0x1B if loop else 0x0B)
        self.loop = loop

    @rule(value=st.integers(0, 255))
    def write_thr(self, value):
        self.uart.write_reg(Reg.DATA, value)
        if self.dlab:
            return
        if self.loop:
            if len(self.model_rx) < RX_CAPACITY:
                self.model_rx.append(value)
        else:
            self.model_out.append(value)

    @rule()
    def read_rbr(self):
        value = self.uart.read_reg(Reg.DATA)
        if not self.dlab:
            assert value == (self.model_rx.popleft() if self.model_rx else 0)

    @rule()
    def read_iir(self):
        iir = self.uart.read_reg(Reg.IIR)
        assert iir & 0xC0 == IIR_FIFO_BITS
        if self.ier & 1 and self.model_rx:
            assert iir & 0x0F == Iir.RDI
        elif not self.ier & 3:
            assert iir & 0x0F == Iir.NO_INT

    @invariant()
    def registers_agree(self):
        if not self.dlab:
            assert self.uart.read_reg(Reg.IER) == self.ier
        lsr = self.uart.read_reg(Reg.LSR)
        assert lsr & 0x60 == 0x60
        assert bool(lsr & 1) == bool(self.model_rx)
        assert bytes(self.out) == bytes(self.model_out)


TestUartMachine = UartMachine.TestCase
