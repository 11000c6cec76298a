"""Several vCPUs on the real /dev/kvm: an AP started by INIT/SIPI from the BSP runs on its own thread,
its exits are handled, its end ends the run, and no AP thread outlives a run."""
import threading
import time

import pytest

from launcher.hypervisor.base import BootSpec, Outcome
from launcher.hypervisor.errors import SnapshotUnsupported, TooManyVcpus
from launcher.hypervisor import mptable
from launcher.hypervisor.kvm import KvmBackend
from launcher.loader import KernelKind
from launcher.memory import GuestMemory
from tests.unit import tiny_guests as g

pytestmark = pytest.mark.kvm

AP_START = 0x10000          # SIPI vector 0x10: the AP starts in real mode at 0x1000:0000
# 16-bit: mov dx, 0x3f8; mov al, 'A'; out dx, al; mov al, 0xfe; out 0x64, al (reset); jmp $
AP_SAYS_A_AND_RESETS = bytes.fromhex("baf803" "b041" "ee" "b0fe" "e664" "ebfe")
LAPIC = bytes.fromhex("b80000e0fe")                     # mov eax, 0xfee00000


def lapic_write(offset: int, value: int) -> bytes:
    """mov dword [rax + offset], value"""
    return bytes.fromhex("c780") + offset.to_bytes(4, "little") + value.to_bytes(4, "little")


START_AP1 = (LAPIC + lapic_write(0xF0, 0x1FF)           # software-enable the BSP's local APIC
             + lapic_write(0x310, 1 << 24)              # ICR high: destination APIC id 1
             + lapic_write(0x300, 0x4500)               # INIT, level assert
             + lapic_write(0x300, 0x4600 | AP_START >> 12))   # start-up IPI
CLI_HLT = b"\xfa\xf4"


def run(bsp_code: bytes, ap_code: bytes = b"", *, cpus=2, timeout=10.0):
    out = bytearray()
    with GuestMemory(4 << 20) as mem:
        mem.write(0x100000, bsp_code)
        mem.write(AP_START, ap_code)
        with KvmBackend(mem, out.extend, irqchip=True, cpus=cpus) as backend:
            backend.initialize(BootSpec(0x100000, 0x7000, KernelKind.ELF64))
            event = backend.run(time.monotonic() + timeout)
            aps = [t.name for t in threading.enumerate() if t.name.startswith("kvm-ap")]
            return event, bytes(out), aps, backend


def test_an_ap_started_by_sipi_runs_on_its_own_thread_and_its_reset_ends_the_run():
    event, out, aps, backend = run(START_AP1 + g.SPIN, AP_SAYS_A_AND_RESETS)
    assert event.outcome is Outcome.REBOOT, event
    assert out == b"A"
    assert aps == []                                    # joined before run() returned


def test_a_timeout_stops_every_vcpu_including_an_ap_never_started():
    event, _, aps, _ = run(g.SPIN, cpus=3, timeout=0.5)
    assert event.outcome is Outcome.TIMEOUT and aps == []


def test_bsp_halted_with_interrupts_off_and_aps_parked_ends_the_run():
    event, _, aps, _ = run(CLI_HLT)
    assert event.outcome is Outcome.HALTED and "every vCPU" in event.detail and aps == []


def test_more_than_one_vcpu_needs_the_irqchip_and_fits_the_mp_table():
    with GuestMemory(4 << 20) as mem:
        with pytest.raises(TooManyVcpus, match="irqchip"):
            KvmBackend(mem, lambda d: None, irqchip=False, cpus=2)
        most = mptable.max_cpus()
        with pytest.raises(TooManyVcpus, match=f"1 to {most}"):
            KvmBackend(mem, lambda d: None, cpus=most + 1)


def test_a_multi_vcpu_guest_cannot_be_snapshotted():
    with GuestMemory(4 << 20) as mem, KvmBackend(mem, lambda d: None, cpus=2) as other:
        other.initialize(BootSpec(0x100000, 0x7000, KernelKind.ELF64))
        with pytest.raises(SnapshotUnsupported, match="--cpus 1"):
            other.save_state()


def test_the_mp_table_is_written_and_reserved_only_for_more_than_one_vcpu():
    for cpus, expected in ((1, bytes(4)), (2, b"_MP_")):
        with GuestMemory(4 << 20) as mem, KvmBackend(mem, lambda d: None, cpus=cpus) as backend:
            backend.initialize(BootSpec(0x100000, 0x7000, KernelKind.ELF64))
            assert mem.read(0x9FC00, 4) == expected
            reserved = [(e.addr, e.size) for e in backend.boot_layout().e820 if e.type == 2]
            assert reserved == ([(0x9FC00, 0x400)] if cpus > 1 else [])
