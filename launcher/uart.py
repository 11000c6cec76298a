"""An 8250/16550A UART as a pure state machine (after rust-vmm's vm-superio Serial).

Driven only by read_reg(offset), write_reg(offset, value) and enqueue(bytes): no
threads, no fds.  Output bytes go to an injected `out` callable, interrupts leave
through an injected `trigger` callable (the KVM backend wires it to IRQ 4).

What Linux's 8250 driver needs from it (measured on the kvm_pvm host, see
shared/reference/kvm-host-notes.md): IER reads back what was written; IIR reports
"transmit holding register empty" and an interrupt is raised when the guest enables
that interrupt, or user-space console writes stall; LSR reads THRE|TEMT; MSR reads
DCD|DSR|CTS.  Callers serialise access (the console thread enqueues input).
"""
from __future__ import annotations

import enum
from collections import deque
from typing import Callable


class Reg(enum.IntEnum):
    DATA = 0   # RBR on read, THR on write; DLL when LCR.DLAB
    IER = 1    # DLM when LCR.DLAB
    IIR = 2    # FCR on write
    LCR = 3
    MCR = 4
    LSR = 5
    MSR = 6
    SCR = 7


class Ier(enum.IntFlag):
    RDI = 0x01   # received data available
    THRI = 0x02  # transmit holding register empty
    RLSI = 0x04
    MSI = 0x08


class Iir(enum.IntEnum):
    NO_INT = 0x01
    THRI = 0x02
    RDI = 0x04


IIR_FIFO_BITS = 0xC0  # "FIFOs enabled": a 16550A


class Lsr(enum.IntFlag):
    DR = 0x01
    THRE = 0x20
    TEMT = 0x40


class Mcr(enum.IntFlag):
    DTR = 0x01
    RTS = 0x02
    OUT1 = 0x04
    OUT2 = 0x08
    LOOP = 0x10


LCR_DLAB = 0x80
MSR_DEFAULT = 0xB0  # DCD | DSR | CTS: a modem that is always there
RX_CAPACITY = 4096


class Uart8250:
    def __init__(self, out: Callable[[bytes], None], trigger: Callable[[], None] = lambda: None):
        self._out = out
        self._trigger = trigger
        self.ier = 0
        self.lcr = 0x03  # 8N1
        self.mcr = Mcr.OUT2
        self.scr = 0
        self.dll, self.dlm = 0x0C, 0  # 9600 baud, as firmware leaves it
        self._thr_pending = False
        self._rx: deque[int] = deque()
        self.dropped_input = 0  # bytes refused because the guest is not reading

    # -- the interrupt condition ------------------------------------------------
    def _iir(self) -> int:
        if self.ier & Ier.RDI and self._rx:
            return Iir.RDI
        if self.ier & Ier.THRI and self._thr_pending:
            return Iir.THRI
        return Iir.NO_INT

    def _update(self) -> None:
        if self._iir() != Iir.NO_INT:
            self._trigger()

    # -- guest side -----------------------------------------------------------
    def write_reg(self, offset: int, value: int) -> None:
        value &= 0xFF
        dlab = self.lcr & LCR_DLAB
        if offset == Reg.DATA and dlab:
            self.dll = value
        elif offset == Reg.IER and dlab:
            self.dlm = value
        elif offset == Reg.DATA:
            self._transmit(value)
        elif offset == Reg.IER:
            enabling_thri = value & Ier.THRI and not self.ier & Ier.THRI
            self.ier = value & 0x0F
            if enabling_thri:
                # The holding register is empty now, so enabling its interrupt raises one
                # at once, as on real hardware; Linux's start_tx relies on it.
                self._thr_pending = True
            self._update()
        elif offset == Reg.LCR:
            self.lcr = value
        elif offset == Reg.MCR:
            self.mcr = value & 0x1F
        elif offset == Reg.SCR:
            self.scr = value
        # FCR writes, LSR and MSR writes: nothing to model.

    def _transmit(self, value: int) -> None:
        if self.mcr & Mcr.LOOP:
            self._receive(bytes([value]))
        else:
            self._out(bytes([value]))
        self._thr_pending = True
        self._update()

    def read_reg(self, offset: int) -> int:
        dlab = self.lcr & LCR_DLAB
        if offset == Reg.DATA:
            return self.dll if dlab else self._read_rbr()
        if offset == Reg.IER:
            return self.dlm if dlab else self.ier
        if offset == Reg.IIR:
            iir = self._iir()
            if iir == Iir.THRI:
                self._thr_pending = False  # reading IIR acknowledges THRE
            return iir | IIR_FIFO_BITS
        if offset == Reg.LCR:
            return self.lcr
        if offset == Reg.MCR:
            return self.mcr
        if offset == Reg.LSR:
            return Lsr.THRE | Lsr.TEMT | (Lsr.DR if self._rx else 0)
        if offset == Reg.MSR:
            return self._msr()
        if offset == Reg.SCR:
            return self.scr
        return 0xFF

    def _read_rbr(self) -> int:
        value = self._rx.popleft() if self._rx else 0
        self._update()
        return value

    def _msr(self) -> int:
        if not self.mcr & Mcr.LOOP:
            return MSR_DEFAULT
        # Loopback wires the modem outputs back: OUT2->DCD, OUT1->RI, DTR->DSR, RTS->CTS.
        mcr = self.mcr
        return ((0x80 if mcr & Mcr.OUT2 else 0) | (0x40 if mcr & Mcr.OUT1 else 0)
                | (0x20 if mcr & Mcr.DTR else 0) | (0x10 if mcr & Mcr.RTS else 0))

    # -- host side ------------------------------------------------------------
    def enqueue(self, data: bytes) -> int:
        """Queue console input for the guest; returns how many bytes were accepted."""
        return self._receive(data)

    def _receive(self, data: bytes) -> int:
        room = RX_CAPACITY - len(self._rx)
        accepted = data[:max(room, 0)]
        self.dropped_input += len(data) - len(accepted)
        self._rx.extend(accepted)
        if accepted:
            self._update()
        return len(accepted)

    @property
    def input_waiting(self) -> int:
        return len(self._rx)

    # -- snapshots ------------------------------------------------------------
    STATE_FIELDS = ("ier", "lcr", "mcr", "scr", "dll", "dlm", "dropped_input")

    def save_state(self) -> dict:
        """Every register, the pending THRE interrupt and the receive FIFO, as plain data."""
        state = {name: int(getattr(self, name)) for name in self.STATE_FIELDS}
        state["thr_pending"] = self._thr_pending
        state["rx"] = bytes(self._rx).hex()
        return state

    def load_state(self, state: dict) -> None:
        """The inverse of save_state(); raises no interrupt (the irqchip state has it)."""
        for name in self.STATE_FIELDS:
            setattr(self, name, int(state[name]))
        self._thr_pending = bool(state["thr_pending"])
        rx = bytes.fromhex(state["rx"])
        if len(rx) > RX_CAPACITY:
            raise ValueError(f"saved 8250 receive FIFO holds {len(rx)} bytes, more than {RX_CAPACITY}")
        self._rx = deque(rx)
