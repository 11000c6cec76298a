"""The CPUID a guest sees: what KVM supports, presented the way a real hypervisor presents it.

KVM_GET_SUPPORTED_CPUID already carries KVM's signature and feature leaves (0x40000000,
0x40000001: kvm-clock and the other paravirtual features), but a guest only looks there
when leaf 1 says it runs under a hypervisor (ECX bit 31), which is the VMM's to set; and
the brand string leaves (0x80000002..4) are left empty, so /proc/cpuinfo would say "17/01".
"""
from __future__ import annotations

HYPERVISOR_BIT = 1 << 31
BRAND = "lguest-harness virtual CPU"
BRAND_LEAVES = (0x80000002, 0x80000003, 0x80000004)


def brand_registers(brand: str = BRAND) -> dict[int, tuple[int, int, int, int]]:
    """eax, ebx, ecx, edx of each brand leaf: 48 bytes, NUL-padded, little-endian words."""
    raw = brand.encode("ascii")[:47].ljust(48, b"\0")
    words = [int.from_bytes(raw[i:i + 4], "little") for i in range(0, 48, 4)]
    return {leaf: tuple(words[n * 4:n * 4 + 4]) for n, leaf in enumerate(BRAND_LEAVES)}


def present_as_guest(cpuid) -> None:
    """Edit a struct kvm_cpuid2 in place: the hypervisor bit and the brand string."""
    brand = brand_registers()
    for i in range(cpuid.nent):
        entry = cpuid.entries[i]
        if entry.function == 1:
            entry.ecx |= HYPERVISOR_BIT
        elif entry.function in brand:
            entry.eax, entry.ebx, entry.ecx, entry.edx = brand[entry.function]


HTT_BIT = 1 << 28                   # leaf 1 EDX: EBX[23:16] counts logical processors
TOPOLOGY_LEAVES = (0xB, 0x1F)       # x2APIC topology: EDX is the x2APIC id at every level


def with_apic_id(cpuid, apic_id: int, cpus: int) -> None:
    """Edit a struct kvm_cpuid2 in place for one vCPU: its initial APIC id (leaf 1 EBX[31:24], and
    EDX of the topology leaves) and the package's logical processor count, as the MP table has
    them (KVM gives vCPU n local APIC id n)."""
    for i in range(cpuid.nent):
        entry = cpuid.entries[i]
        if entry.function == 1:
            entry.ebx = (apic_id << 24) | (min(cpus, 0xFF) << 16) | (entry.ebx & 0xFFFF)
            entry.edx = entry.edx | HTT_BIT if cpus > 1 else entry.edx & ~HTT_BIT
        elif entry.function in TOPOLOGY_LEAVES:
            entry.edx = apic_id
