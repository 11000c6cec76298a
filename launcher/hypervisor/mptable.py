"""An Intel MultiProcessor Specification 1.4 table: how a guest without ACPI finds its CPUs and IOAPIC.

Linux (CONFIG_X86_MPPARSE, arch/x86/kernel/mpparse.c) looks for the floating pointer "_MP_" in the
first KiB of memory, in the last KiB of base memory (639 KiB) and in 0xF0000-0xFFFFF.  We put it at
the start of that last KiB, BASE = 0x9FC00, which the e820 map reports reserved (kvm.boot_layout),
with the configuration table right after it.  Entries, in the order the spec asks:
  - one processor per vCPU: local APIC id = vCPU index (KVM gives vCPU n APIC id n), the BSP flagged;
  - one ISA bus, then, with virtio-pci functions, PCI bus 0 (Linux numbers PCI buses in the order
    their entries come: mpparse.c MP_bus_info);
  - the IOAPIC at 0xfec00000 (KVM's in-kernel one), id = the number of vCPUs;
  - an I/O interrupt per ISA IRQ 0-15, to the IOAPIC pin of the same number: KVM's default GSI
    routing (no KVM_SET_GSI_ROUTING: arch/x86/kvm/irq_comm.c default_routing) sends GSI n to PIC
    and IOAPIC pin n, the in-kernel PIT included (GSI 0, so no "IRQ0 -> pin 2" override as
    QEMU's own routing has), as Firecracker declares them;
  - an I/O interrupt per virtio-pci function: source IRQ (slot << 2) | (pin - 1) on the PCI bus, to
    the pin its INTERRUPT_LINE names, declared edge-triggered active-high: the launcher raises
    INTx as an irqfd pulse, which a level-triggered pin would not see as a new interrupt;
  - the local interrupts: ExtINT on LINT0, NMI on LINT1, for every local APIC.
Feature byte 2 bit 7 (IMCR present) stays clear: virtual-wire mode, the PIC through LINT0.
"""
from __future__ import annotations

import struct

from launcher.errors import LauncherError
from launcher.transports.pci_host import IntxRoute

BASE = 0x9FC00                      # the last KiB of base memory (639 KiB)
AREA = 0x400
LAPIC_ADDRESS = 0xFEE00000
IOAPIC_ADDRESS = 0xFEC00000
ISA_IRQS = 16
SPEC_REV = 4                        # MP spec 1.4
APIC_VERSION = 0x14                 # an integrated local APIC (KVM reports 0x14 in its version register)
IOAPIC_VERSION = 0x11               # KVM's IOAPIC version register
CPU_SIGNATURE = 0x600               # family 6: what the entry says when CPUID is there to ask anyway
CPU_FEATURES = (1 << 0) | (1 << 9)  # FPU, APIC

FLOATING = struct.Struct("<4sIBBBBB3s")             # signature, physptr, length, spec, checksum, features 1, 2, 3-5
HEADER = struct.Struct("<4sHBB8s12sIHHIHBB")        # "PCMP", length, spec, checksum, oem, product, oemptr,
                                                    # oemsize, entry count, lapic, ext length, ext checksum, 0
PROCESSOR = struct.Struct("<BBBBIIQ")               # 0, apic id, apic version, flags, signature, features
BUS = struct.Struct("<BB6s")                        # 1, bus id, type
IOAPIC = struct.Struct("<BBBBI")                    # 2, id, version, flags, address
INTERRUPT = struct.Struct("<BBHBBBB")               # 3/4, type, flags, bus, bus irq, apic id, pin

CPU_ENABLED, CPU_BSP = 0x1, 0x2
IOAPIC_USABLE = 0x1
MP_INT, MP_NMI, MP_EXTINT = 0, 1, 3
ALL_LAPICS = 0xFF
ISA_BUS_ID, PCI_BUS_ID = 0, 1
EDGE_ACTIVE_HIGH = 0b0101           # I/O interrupt flags: polarity 01 (high), trigger 01 (edge)
MOST_PCI_ROUTES = 16                # what max_cpus() keeps room for


class TooManyCpus(LauncherError):
    def __init__(self, cpus: int):
        super().__init__(f"--cpus={cpus}: the MP table for that many vCPUs does not fit the {AREA} bytes at "
                         f"{BASE:#x} (at most {max_cpus()} vCPUs)")


def _checksum(data: bytes) -> int:
    """The byte that makes the structure's bytes sum to 0 (mod 256)."""
    return -sum(data) & 0xFF


def _entries(cpus: int, pci_routes: tuple[IntxRoute, ...] = ()) -> list[bytes]:
    ioapic_id = cpus
    entries = [PROCESSOR.pack(0, cpu, APIC_VERSION, CPU_ENABLED | (CPU_BSP if cpu == 0 else 0),
                              CPU_SIGNATURE, CPU_FEATURES, 0) for cpu in range(cpus)]
    entries.append(BUS.pack(1, ISA_BUS_ID, b"ISA   "))
    entries += [BUS.pack(1, PCI_BUS_ID, b"PCI   ")] if pci_routes else []
    entries.append(IOAPIC.pack(2, ioapic_id, IOAPIC_VERSION, IOAPIC_USABLE, IOAPIC_ADDRESS))
    entries += [INTERRUPT.pack(3, MP_INT, 0, ISA_BUS_ID, irq, ioapic_id, irq) for irq in range(ISA_IRQS)]
    entries += [INTERRUPT.pack(3, MP_INT, EDGE_ACTIVE_HIGH, PCI_BUS_ID, (r.slot << 2) | (r.pin - 1), ioapic_id, r.irq)
                for r in pci_routes]
    entries.append(INTERRUPT.pack(4, MP_EXTINT, 0, ISA_BUS_ID, 0, ALL_LAPICS, 0))
    entries.append(INTERRUPT.pack(4, MP_NMI, 0, ISA_BUS_ID, 0, ALL_LAPICS, 1))
    return entries


def max_cpus() -> int:
    routes = tuple(IntxRoute(slot, 1, 5) for slot in range(MOST_PCI_ROUTES))
    fixed = FLOATING.size + HEADER.size + len(b"".join(_entries(0, routes)))
    return (AREA - fixed) // PROCESSOR.size


def build(cpus: int, base: int = BASE, pci_routes: tuple[IntxRoute, ...] = ()) -> bytes:
    """The floating pointer at `base` followed by the configuration table."""
    if not 1 <= cpus <= max_cpus():
        raise TooManyCpus(cpus)
    if len(pci_routes) > MOST_PCI_ROUTES:
        raise LauncherError(f"{len(pci_routes)} virtio-pci functions: the MP table holds at most {MOST_PCI_ROUTES}")
    entries = _entries(cpus, tuple(pci_routes))
    body = b"".join(entries)
    length = HEADER.size + len(body)
    fields = [b"PCMP", length, SPEC_REV, 0, b"LGUEST  ", b"HARNESS     ", 0, 0, len(entries), LAPIC_ADDRESS, 0, 0, 0]
    header = HEADER.pack(*fields)
    fields[3] = _checksum(header + body)
    table = HEADER.pack(*fields) + body
    floating = FLOATING.pack(b"_MP_", base + FLOATING.size, 1, SPEC_REV, 0, 0, 0, bytes(3))
    floating = FLOATING.pack(b"_MP_", base + FLOATING.size, 1, SPEC_REV, _checksum(floating), 0, 0, bytes(3))
    return floating + table


def write(memory, cpus: int, base: int = BASE, pci_routes: tuple[IntxRoute, ...] = ()) -> None:
    memory.write(base, build(cpus, base, pci_routes))
