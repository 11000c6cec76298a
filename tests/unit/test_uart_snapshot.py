"""The 8250's snapshot state: every register, the pending THRE interrupt and the receive FIFO."""
import json

import pytest

from launcher.uart import RX_CAPACITY, Reg, Uart8250


def test_round_trip_keeps_registers_fifo_and_pending_interrupt():
    out, irqs = bytearray(), []
    uart = Uart8250(out.extend, lambda: irqs.append(1))
    uart.write_reg(Reg.LCR, 0x80)
    uart.write_reg(Reg.DATA, 0x01)      # DLL
    uart.write_reg(Reg.LCR, 0x13)
    uart.write_reg(Reg.IER, 0x03)
    uart.write_reg(Reg.SCR, 0x5A)
    uart.enqueue(b"abc")
    state = json.loads(json.dumps(uart.save_state()))

    twin = Uart8250(bytearray().extend, lambda: irqs.append(2))
    twin.load_state(state)
    assert irqs.count(2) == 0           # loading raises nothing: the irqchip state has it
    for reg in (Reg.IER, Reg.LCR, Reg.MCR, Reg.SCR, Reg.LSR, Reg.MSR):
        assert twin.read_reg(reg) == uart.read_reg(reg), reg
    assert twin.ier == 0x03 and twin.lcr == 0x13 and twin.scr == 0x5A and twin.dll == 0x01
    assert [twin.read_reg(Reg.DATA) for _ in range(3)] == list(b"abc")
    assert twin.read_reg(Reg.LSR) & 0x01 == 0


def test_pending_thre_is_restored():
    uart = Uart8250(bytearray().extend)
    uart.write_reg(Reg.IER, 0x02)       # enabling THRI makes one pending
    twin = Uart8250(bytearray().extend)
    twin.load_state(uart.save_state())
    assert twin.read_reg(Reg.IIR) & 0x0F == 0x02
    assert twin.read_reg(Reg.IIR) & 0x0F == 0x01    # read once: acknowledged


def test_an_oversized_fifo_is_refused():
    state = Uart8250(bytearray().extend).save_state()
    state["rx"] = "00" * (RX_CAPACITY + 1)
    with pytest.raises(ValueError, match="receive FIFO"):
        Uart8250(bytearray().extend).load_state(state)
