"""virtio-mmio on the real /dev/kvm: QueueNotify kicks land in the queue's eventfd without an
exit (KVM_IOEVENTFD, datamatch), other register accesses reach the transport through the exit
loop, and interrupts leave through an irqfd."""
import os
import time

import pytest

from harness.fakes.backends import SeededEntropy
from launcher.devices.rng import RngDevice
from launcher.hypervisor.base import BootSpec, Outcome
from launcher.hypervisor.kvm import KvmBackend
from launcher.devspec import close_devices
from launcher.hypervisor.kvm_virtio import IRQS, MMIO_BASE, KvmVirtioMmio, TooManyMmioDevices
from launcher.io.service import QueueWorkers
from launcher.loader import Cmdline, KernelKind
from launcher.memory import GuestMemory
from launcher.transports.mmio import MAGIC_VALUE
from launcher.transports.virtio_core import VirtioRule
from tests.unit import tiny_guests as g

pytestmark = pytest.mark.kvm


def mov_ebx(addr: int) -> bytes:
    return b"\xbb" + addr.to_bytes(4, "little")          # mov ebx, imm32 (zero-extends into rbx)


def store(value: int) -> bytes:
    return b"\xc7\x03" + value.to_bytes(4, "little")      # mov dword [rbx], imm32


LOAD_EAX = b"\x8b\x03"                                    # mov eax, [rbx]
OUT_AL_3F8 = bytes.fromhex("66baf803ee")                  # mov dx, 0x3f8; out dx, al


def run_guest(code: bytes, devices_count: int = 2, irqchip: bool = False):
    out = bytearray()
    with GuestMemory(4 << 20) as mem:
        mem.write(0x100000, code)
        with KvmBackend(mem, out.extend, irqchip=irqchip) as backend:
            devices = []
            for _ in range(devices_count):
                dev = RngDevice(SeededEntropy())
                dev.runner = QueueWorkers(dev)
                devices.append(dev)
            mmio = KvmVirtioMmio(backend, mem, devices)
            try:
                backend.initialize(BootSpec(0x100000, 0x7000, KernelKind.ELF64))
                event = backend.run(time.monotonic() + 5)
                kicks = [_take(dev.runner.eventfd(0)) for dev in devices]
                return event, bytes(out), backend.stats.exits.get("KVM_EXIT_MMIO", 0), mmio, kicks
            finally:
                mmio.close()
                close_devices(mmio_devices(mmio))


def _take(fd: int) -> int:
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


def test_queue_notify_is_an_ioeventfd_and_registers_take_the_exit_loop():
    second = MMIO_BASE + 0x1000
    code = (mov_ebx(second + 0x50) + store(0)          # device 1, queue 0: datamatch -> its eventfd
            + store(0) + store(3)                      # again, then a queue it does not have: an exit
            + mov_ebx(second) + LOAD_EAX + OUT_AL_3F8  # MagicValue's low byte to the UART
            + g.HLT)
    event, out, mmio_exits, mmio, kicks = run_guest(code)
    assert event.outcome is Outcome.HALTED
    assert out == bytes([MAGIC_VALUE & 0xFF]) == b"v"
    assert kicks == [0, 2]                             # both kicks reached device 1's queue, none device 0's
    assert mmio_exits == 2                             # the notify of queue 3 and the MagicValue read
    t = mmio.slots[1].transport
    assert t.metrics.notifies == 1
    assert t.metrics.rules_broken == {VirtioRule.NOTIFY_QUEUE_NOT_READY.name: 1}


def test_transport_trigger_signals_the_irqfd():
    with GuestMemory(4 << 20) as mem:
        with KvmBackend(mem, lambda data: None, irqchip=True) as backend:
            dev = RngDevice(SeededEntropy())
            mmio = KvmVirtioMmio(backend, mem, [dev])
            try:
                slot = mmio.slots[0]
                assert slot.irq == IRQS[0] and slot.irq_fd is not None
                assert mmio.describe() == ["rng: virtio-mmio at 0xd0000000, irq 5 (irqfd, kicks through the exit loop)"]
                seen = []
                real = os.eventfd_write
                slot.transport.interrupt = lambda: (seen.append(1), real(slot.irq_fd, 1))
                dev.trigger.trigger(0)
                assert seen == [1] and slot.transport.interrupt_status == 1
            finally:
                mmio.close()
                close_devices(mmio_devices(mmio))
            assert slot.irq_fd is None


def test_command_line_announces_each_device_in_order():
    with GuestMemory(4 << 20) as mem:
        with KvmBackend(mem, lambda data: None, irqchip=True) as backend:
            mmio = KvmVirtioMmio(backend, mem, [RngDevice(SeededEntropy()) for _ in range(3)])
            try:
                cmdline = Cmdline()
                mmio.add_to_cmdline(cmdline)
                assert str(cmdline) == ("virtio_mmio.device=0x200@0xd0000000:5 virtio_mmio.device=0x200@0xd0001000:6 "
                                        "virtio_mmio.device=0x200@0xd0002000:7")
                assert mmio.cmdline_values()[0] == "0x200@0xd0000000:5"
            finally:
                mmio.close()
                close_devices(mmio_devices(mmio))


def test_too_many_devices_is_refused():
    with GuestMemory(4 << 20) as mem:
        with KvmBackend(mem, lambda data: None, irqchip=True) as backend:
            with pytest.raises(TooManyMmioDevices, match="free ISA interrupt lines"):
                KvmVirtioMmio(backend, mem, [object()] * (len(IRQS) + 1))


def mmio_devices(mmio) -> list:
    return [slot.device for slot in mmio.slots]
