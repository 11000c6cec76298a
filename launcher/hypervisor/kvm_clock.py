"""kvm-clock: the paravirtual clock a KVM guest reads instead of the slow, emulated PIT/HPET.

The guest finds it through CPUID leaf 0x40000001 (KVM_CPUID_FEATURES, Documentation/virt/kvm/
x86/cpuid.rst), which KVM_GET_SUPPORTED_CPUID fills and kvm_cpuid passes on once leaf 1 says
"hypervisor"; the guest then registers a per-vCPU time page through MSR_KVM_SYSTEM_TIME_NEW
and KVM keeps it current.  The VMM's part is the VM's clock: KVM_SET_CLOCK puts it at 0 ns
when the guest starts (the clock otherwise counts from KVM_CREATE_VM, launcher set-up time
included), and a restored snapshot carries on from its saved value through the same call.
"""
from __future__ import annotations

import enum

from native.kvm import ffi, lib

from launcher.hypervisor.kvm_sys import ioctl

FEATURES_LEAF = 0x40000001


class KvmFeature(enum.IntFlag):
    """KVM_CPUID_FEATURES eax bits (the ones a clock depends on, and a few a guest reports)."""

    CLOCKSOURCE = 1 << 0            # kvm-clock at the old MSRs 0x11/0x12
    NOP_IO_DELAY = 1 << 1
    CLOCKSOURCE2 = 1 << 3           # kvm-clock at MSRs 0x4b564d00/01, what Linux uses
    ASYNC_PF = 1 << 4
    STEAL_TIME = 1 << 5
    PV_EOI = 1 << 6
    PV_UNHALT = 1 << 7
    CLOCKSOURCE_STABLE_BIT = 1 << 24    # the time pages agree across vCPUs: no cross-vCPU fix-up


KVM_CLOCK = KvmFeature.CLOCKSOURCE | KvmFeature.CLOCKSOURCE2 | KvmFeature.CLOCKSOURCE_STABLE_BIT


def offered(cpuid) -> KvmFeature:
    """The KVM feature bits a struct kvm_cpuid2 offers the guest (0 without the leaf)."""
    for i in range(cpuid.nent):
        if cpuid.entries[i].function == FEATURES_LEAF:
            return KvmFeature(cpuid.entries[i].eax)
    return KvmFeature(0)


def set_clock(vm_fd: int, nanoseconds: int = 0) -> None:
    """The VM's kvm-clock reads `nanoseconds` now (flags 0: no KVM_CLOCK_REALTIME/HOST_TSC
    adjustment, so the clock carries on from exactly that value)."""
    clock = ffi.new("struct kvm_clock_data *")
    clock.clock = nanoseconds
    ioctl(vm_fd, lib.KVM_SET_CLOCK, clock)


def get_clock(vm_fd: int) -> int:
    clock = ffi.new("struct kvm_clock_data *")
    ioctl(vm_fd, lib.KVM_GET_CLOCK, clock)
    return clock.clock
