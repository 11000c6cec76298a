"""KVM exit paths, driven by tiny hand-assembled guests on the real /dev/kvm."""
import time

import pytest

from launcher.hypervisor.base import BootSpec, Notify, Outcome
from launcher.hypervisor.kvm import KvmBackend
from launcher.loader import KernelKind
from launcher.memory import GuestMemory
from tests.unit import tiny_guests as g

pytestmark = pytest.mark.kvm


def boot(code: bytes, *, irqchip=False, bits=64, timeout=5.0, backend_hook=None):
    out = bytearray()
    with GuestMemory(4 << 20) as mem:
        mem.write(0x100000, code)
        with KvmBackend(mem, out.extend, irqchip=irqchip) as backend:
            if backend_hook:
                backend_hook(backend)
            kind = KernelKind.ELF64 if bits == 64 else KernelKind.ELF32
            backend.initialize(BootSpec(0x100000, 0x7000, kind))
            start = time.monotonic()
            event = backend.run(time.monotonic() + timeout)
            return event, bytes(out), time.monotonic() - start, backend


@pytest.mark.parametrize("bits", [32, 64])
def test_console_output_then_hlt(bits):
    event, out, _, backend = boot(g.say(b"Hi\n") + g.HLT, bits=bits)
    assert out == b"Hi\n"
    assert event.outcome is Outcome.HALTED and event.outcome.exit_status == 0
    assert backend.stats.exits["KVM_EXIT_IO"] == 3


def test_keyboard_controller_reset_is_a_reboot():
    event, _, _, _ = boot(g.RESET + g.SPIN, irqchip=True)
    assert event.outcome is Outcome.REBOOT and "0x64" in event.detail


def test_power_down_line_ends_the_run_even_with_an_irqchip_hlt():
    # With the in-kernel irqchip a hlt never exits: only the console line can end the run.
    event, out, elapsed, _ = boot(g.say(b"reboot: Power down\n") + g.HLT, irqchip=True, timeout=10)
    assert event.outcome is Outcome.POWER_OFF and elapsed < 5


def test_timeout_interrupts_a_spinning_guest():
    event, _, elapsed, backend = boot(g.SPIN, irqchip=True, timeout=0.5)
    assert event.outcome is Outcome.TIMEOUT and event.outcome.exit_status == 4
    assert 0.4 < elapsed < 3
    assert backend.stats.seconds_in_run > 0.3


def test_panic_line_then_spin_is_a_panic_after_the_grace_period():
    event, _, elapsed, _ = boot(g.say(b"Kernel panic - not syncing: test\n") + g.SPIN, irqchip=True, timeout=20)
    assert event.outcome is Outcome.PANIC and event.outcome.exit_status == 3
    assert "Kernel panic - not syncing: test" in event.detail and elapsed < 10


def test_panic_then_reset_stays_a_panic():
    event, _, _, _ = boot(g.say(b"Kernel panic - not syncing: x\n") + g.RESET + g.SPIN, irqchip=True)
    assert event.outcome is Outcome.PANIC


def test_triple_fault_is_a_guest_crash():
    event, _, _, _ = boot(g.UD2)
    assert event.outcome is Outcome.GUEST_CRASH and "triple-fault" in event.detail


def test_cmos_reads_zero_and_unknown_ports_read_ff():
    event, out, _, backend = boot(g.IN_CMOS + g.out_al() + g.IN_UNKNOWN + b"\xee" + g.HLT)
    assert out == b"\x00\xff" and event.outcome is Outcome.HALTED
    assert backend.ports.unclaimed == {0x80: 1}


def test_unclaimed_mmio_write_is_a_notification():
    # mov dword [0x10000050], 7 ; hlt  (C7 04 25 disp32 imm32), past the 4 MiB of RAM
    code = bytes.fromhex("c704255000001007000000") + g.HLT
    event, _, _, _ = boot(code)
    assert event == Notify(0x10000050, 7)


def test_enabling_the_uart_tx_interrupt_raises_irq4_through_the_irqchip():
    enable_thri = bytes.fromhex("66baf903b002ee")  # mov dx, 0x3f9; mov al, IER_THRI; out dx, al
    raised = []

    def spy(backend):
        real = backend.raise_interrupt
        backend.raise_interrupt = lambda irq: (raised.append(irq), real(irq))

    event, _, _, backend = boot(enable_thri + g.SPIN, irqchip=True, timeout=0.3, backend_hook=spy)
    assert backend.uart.ier == 2 and raised == [4]  # KVM_IRQ_LINE accepted it (an error would raise)
    assert backend.send_console_input(b"abc") == 3 and backend.uart.input_waiting == 3


def test_emulation_failure_names_the_instruction_when_the_host_rejects_it():
    event, _, _, _ = boot(g.CLAC + g.HLT)
    if event.outcome is Outcome.HALTED:
        pytest.skip("this host runs clac natively (not a kvm_pvm host)")  # honest: only kvm_pvm rejects it
    assert event.outcome is Outcome.EMULATION_FAILURE
    assert "`clac`" in event.detail and "0f 01 ca" in event.detail and "clearcpuid=smap" in event.detail
    assert "RIP 0x100000" in event.detail


def test_ioeventfd_takes_the_write_instead_of_a_notification():
    import os

    efd = os.eventfd(0, os.EFD_NONBLOCK)
    write_mmio = bytes.fromhex("c704255000001007000000")  # mov dword [0x10000050], 7
    try:
        event, _, _, _ = boot(write_mmio + g.HLT,
                              backend_hook=lambda b: b.attach_eventfd(0x10000050, efd, length=4, datamatch=7))
        assert event.outcome is Outcome.HALTED  # no Notify: KVM signalled the eventfd itself
        assert os.eventfd_read(efd) == 1
    finally:
        os.close(efd)


def test_restart_boots_again_from_fresh_state():
    out = bytearray()
    with GuestMemory(4 << 20) as mem:
        mem.write(0x100000, g.say(b"A") + g.HLT)
        with KvmBackend(mem, out.extend, irqchip=False) as backend:
            for _ in range(2):
                backend.initialize(BootSpec(0x100000, 0x7000, KernelKind.ELF64))
                assert backend.run(time.monotonic() + 5).outcome is Outcome.HALTED
                backend.restart()
    assert out == b"AA"


def test_run_before_initialize_is_refused():
    from launcher.hypervisor.errors import NotInitialized

    with GuestMemory(4 << 20) as mem, KvmBackend(mem, lambda d: None) as backend:
        with pytest.raises(NotInitialized):
            backend.run()


def test_boot_layout_is_a_pc():
    with GuestMemory(64 << 20) as mem, KvmBackend(mem, lambda d: None) as backend:
        layout = backend.boot_layout()
        assert [(e.addr, e.size) for e in layout.e820] == [(0, 0x9FC00), (0x100000, (64 << 20) - 0x100000)]
        assert layout.hardware_subarch == 0 and layout.prefer_elf
        options = [a.option for a in backend.cmdline_additions()]
        assert options[0] == "console=ttyS0" and any(o.startswith("tsc_early_khz=") for o in options)
        assert {"i8042.noaux", "i8042.dumbkbd"} <= set(options)     # no mouse, no keyboard commands


def test_mmio_reads_come_from_the_bus():
    # mov eax, [0x10000004] ; out dx(=COM1), al ; mov eax, [0x20000000] ; out dx, al ; hlt
    code = (g.MOV_DX_COM1 + bytes.fromhex("8b042504000010") + b"\xee"
            + bytes.fromhex("8b042500000020") + b"\xee" + g.HLT)

    class Device:
        def read(self, offset, size):
            return 0x41 + offset  # 'E' at offset 4

        def write(self, offset, size, value):
            raise AssertionError("no writes expected")

    event, out, _, _ = boot(code, backend_hook=lambda b: b.mmio.register(0x10000000, 0x1000, Device()))
    assert event.outcome is Outcome.HALTED
    assert out == b"E\xff"  # the device's byte, then the unclaimed default
