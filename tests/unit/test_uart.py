"""The 8250 state machine: register read-back, THRE and RX interrupts, loopback, backpressure."""
from launcher.uart import IIR_FIFO_BITS, RX_CAPACITY, Ier, Iir, Lsr, Reg, Uart8250


class Recorder:
    def __init__(self):
        self.out, self.irqs = bytearray(), 0

    def uart(self):
        return Uart8250(out=self.out.extend, trigger=self.trigger)

    def trigger(self):
        self.irqs += 1


def test_idle_registers_as_linux_expects():
    uart = Recorder().uart()
    assert uart.read_reg(Reg.LSR) == 0x60
    assert uart.read_reg(Reg.MSR) == 0xB0
    assert uart.read_reg(Reg.IIR) == Iir.NO_INT | IIR_FIFO_BITS
    uart.write_reg(Reg.IER, 0xFF)
    assert uart.read_reg(Reg.IER) == 0x0F


def test_thr_write_goes_out_without_interrupts_when_disabled():
    rec = Recorder()
    uart = rec.uart()
    for b in b"hi\n":
        uart.write_reg(Reg.DATA, b)
    assert bytes(rec.out) == b"hi\n" and rec.irqs == 0


def test_enabling_thri_raises_an_interrupt_and_iir_read_acknowledges_it():
    rec = Recorder()
    uart = rec.uart()
    uart.write_reg(Reg.IER, Ier.THRI)
    assert rec.irqs == 1
    assert uart.read_reg(Reg.IIR) == Iir.THRI | IIR_FIFO_BITS
    assert uart.read_reg(Reg.IIR) == Iir.NO_INT | IIR_FIFO_BITS
    uart.write_reg(Reg.DATA, ord("x"))
    assert rec.irqs == 2 and uart.read_reg(Reg.IIR) & 0x0F == Iir.THRI


def test_rx_data_ready_and_interrupt():
    rec = Recorder()
    uart = rec.uart()
    assert uart.enqueue(b"ab") == 2 and rec.irqs == 0  # RX interrupt not enabled yet
    assert uart.read_reg(Reg.LSR) & Lsr.DR
    uart.write_reg(Reg.IER, Ier.RDI)
    assert rec.irqs == 1 and uart.read_reg(Reg.IIR) & 0x0F == Iir.RDI
    assert uart.read_reg(Reg.DATA) == ord("a")
    assert uart.read_reg(Reg.DATA) == ord("b")
    assert not uart.read_reg(Reg.LSR) & Lsr.DR
    assert uart.read_reg(Reg.IIR) & 0x0F == Iir.NO_INT


def test_rx_has_priority_over_thre():
    uart = Recorder().uart()
    uart.write_reg(Reg.IER, Ier.RDI | Ier.THRI)
    uart.enqueue(b"z")
    assert uart.read_reg(Reg.IIR) & 0x0F == Iir.RDI


def test_dlab_switches_data_and_ier_to_the_divisor():
    uart = Recorder().uart()
    uart.write_reg(Reg.LCR, 0x83)
    uart.write_reg(Reg.DATA, 0x01)
    uart.write_reg(Reg.IER, 0x00)
    assert (uart.read_reg(Reg.DATA), uart.read_reg(Reg.IER)) == (0x01, 0x00)
    uart.write_reg(Reg.LCR, 0x03)
    assert uart.read_reg(Reg.IER) == 0


def test_loopback_as_the_8250_probe_checks_it():
    rec = Recorder()
    uart = rec.uart()
    uart.write_reg(Reg.MCR, 0x10 | 0x0A)  # LOOP | RTS | OUT2
    assert uart.read_reg(Reg.MSR) & 0xF0 == 0x90
    uart.write_reg(Reg.DATA, 0x55)
    assert rec.out == b"" and uart.read_reg(Reg.DATA) == 0x55


def test_scratch_register_and_input_backpressure():
    uart = Recorder().uart()
    uart.write_reg(Reg.SCR, 0xA5)
    assert uart.read_reg(Reg.SCR) == 0xA5
    assert uart.enqueue(bytes(RX_CAPACITY + 10)) == RX_CAPACITY
    assert uart.dropped_input == 10
