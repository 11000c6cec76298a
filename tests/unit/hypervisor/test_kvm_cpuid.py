"""The guest's CPUID: the hypervisor bit and our brand string over what KVM supports."""
import pytest

from launcher.hypervisor import kvm_cpuid


def test_brand_registers_spell_the_brand_across_three_leaves():
    regs = kvm_cpuid.brand_registers("lguest-harness virtual CPU")
    raw = b"".join(word.to_bytes(4, "little") for leaf in kvm_cpuid.BRAND_LEAVES for word in regs[leaf])
    assert raw == b"lguest-harness virtual CPU".ljust(48, b"\0")


@pytest.mark.kvm
def test_supported_cpuid_gains_the_hypervisor_bit_and_brand_and_keeps_kvm_leaves():
    from launcher.hypervisor.kvm_sys import KvmSystem

    system = KvmSystem("/dev/kvm")
    try:
        cpuid = system.supported_cpuid()
        kvm_cpuid.present_as_guest(cpuid)
        entries = {(cpuid.entries[i].function, cpuid.entries[i].index): cpuid.entries[i] for i in range(cpuid.nent)}
    finally:
        system.close()
    assert entries[(1, 0)].ecx & kvm_cpuid.HYPERVISOR_BIT
    signature = entries[(0x40000000, 0)]
    assert (signature.ebx, signature.ecx, signature.edx) == (0x4B4D564B, 0x564B4D56, 0x4D)   # "KVMKVMKVM"
    assert entries[(0x40000001, 0)].eax & (1 << 3)        # KVM_FEATURE_CLOCKSOURCE2: kvm-clock offered
    brand = kvm_cpuid.brand_registers()
    assert (entries[(0x80000002, 0)].eax, entries[(0x80000004, 0)].edx) == (brand[0x80000002][0], brand[0x80000004][3])
