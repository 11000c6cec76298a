"""kvm-clock on the real /dev/kvm: offered through CPUID, and the VM's clock starts with the guest."""
import time

import pytest

from launcher.hypervisor import kvm_clock, kvm_cpuid
from launcher.hypervisor.base import BootSpec
from launcher.hypervisor.kvm import KvmBackend
from launcher.loader import KernelKind
from launcher.memory import GuestMemory

pytestmark = pytest.mark.kvm


def test_the_guest_is_offered_kvm_clock():
    from launcher.hypervisor.kvm_sys import KvmSystem
    system = KvmSystem("/dev/kvm")
    try:
        cpuid = system.supported_cpuid()
        kvm_cpuid.present_as_guest(cpuid)
        assert kvm_clock.offered(cpuid) & kvm_clock.KVM_CLOCK == kvm_clock.KVM_CLOCK
    finally:
        system.close()


def test_set_clock_moves_the_vm_clock_and_it_runs_on():
    with GuestMemory(4 << 20) as mem, KvmBackend(mem, lambda d: None, irqchip=False) as backend:
        kvm_clock.set_clock(backend.vm_fd, 5_000_000_000)
        time.sleep(0.05)
        assert 5_040_000_000 <= kvm_clock.get_clock(backend.vm_fd) < 6_000_000_000


def test_initialize_starts_the_clock_at_zero():
    with GuestMemory(4 << 20) as mem, KvmBackend(mem, lambda d: None, irqchip=False) as backend:
        time.sleep(0.3)                                 # the VM's clock has been running since creation
        backend.initialize(BootSpec(0x100000, 0x7000, KernelKind.ELF64))
        assert kvm_clock.get_clock(backend.vm_fd) < 200_000_000
