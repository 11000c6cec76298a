"""The MP table parses back the way Linux's mpparse.c reads it: checksums, CPUs, IOAPIC, ISA routing."""
import struct

import pytest

from launcher.hypervisor import mptable as mp


def parse(blob: bytes, base: int = mp.BASE):
    sig, physptr, length, spec, _, feature1, feature2, _ = mp.FLOATING.unpack_from(blob)
    assert mp.FLOATING.size == 16 and sig == b"_MP_" and length == 1 and spec == 4
    assert feature1 == 0 and feature2 == 0 and sum(blob[:16]) % 256 == 0       # a table follows; virtual wire
    table = blob[physptr - base:]
    fields = mp.HEADER.unpack_from(table)
    assert fields[0] == b"PCMP" and fields[9] == 0xFEE00000
    size, count = fields[1], fields[8]
    assert sum(table[:size]) % 256 == 0
    entries, offset = [], mp.HEADER.size
    for _ in range(count):
        kind = table[offset]
        layout = mp.PROCESSOR if kind == 0 else mp.BUS if kind == 1 else mp.IOAPIC if kind == 2 else mp.INTERRUPT
        entries.append(layout.unpack_from(table, offset))
        offset += layout.size
    assert offset == size
    return entries


@pytest.mark.parametrize("cpus", [1, 2, 4, mp.max_cpus()])
def test_one_processor_entry_per_vcpu_with_apic_id_n_and_only_cpu0_the_bsp(cpus):
    cpus_seen = [e for e in parse(mp.build(cpus)) if e[0] == 0]
    assert [(e[1], e[3]) for e in cpus_seen] == [(0, 3)] + [(n, 1) for n in range(1, cpus)]


def test_the_ioapic_is_kvms_and_isa_irqs_go_to_the_pin_of_the_same_number():
    entries = parse(mp.build(2))
    ioapic = next(e for e in entries if e[0] == 2)
    assert ioapic[1:] == (2, 0x11, 1, 0xFEC00000)               # id after the CPUs' local APIC ids
    assert next(e for e in entries if e[0] == 1)[2] == b"ISA   "
    routes = {e[4]: (e[5], e[6]) for e in entries if e[0] == 3 and e[1] == mp.MP_INT}
    assert routes == {irq: (2, irq) for irq in range(16)}       # KVM's default GSI routing: PIT on pin 0
    lints = sorted((e[1], e[6]) for e in entries if e[0] == 4)
    assert lints == [(mp.MP_NMI, 1), (mp.MP_EXTINT, 0)]


def test_the_table_fits_its_kib_and_more_cpus_are_refused():
    assert len(mp.build(mp.max_cpus())) <= mp.AREA
    with pytest.raises(mp.TooManyCpus, match="at most"):
        mp.build(mp.max_cpus() + 1)
    with pytest.raises(mp.TooManyCpus):
        mp.build(0)


def test_the_floating_pointer_points_at_the_table_right_after_it():
    assert struct.unpack_from("<I", mp.build(1), 4)[0] == mp.BASE + 16


def test_virtio_pci_functions_get_pci_bus_0_and_edge_triggered_entries_to_their_line():
    from launcher.transports.pci_host import IntxRoute
    routes = (IntxRoute(1, 1, 5), IntxRoute(2, 1, 6))
    entries = parse(mp.build(2, pci_routes=routes))
    buses = [(e[1], e[2]) for e in entries if e[0] == 1]
    assert buses == [(mp.ISA_BUS_ID, b"ISA   "), (mp.PCI_BUS_ID, b"PCI   ")]    # the first PCI bus is bus 0
    pci = [(e[2], e[4], e[5], e[6]) for e in entries if e[0] == 3 and e[3] == mp.PCI_BUS_ID]
    assert pci == [(0b0101, (1 << 2) | 0, 2, 5), (0b0101, (2 << 2) | 0, 2, 6)]   # INTA# of slots 1, 2
    assert not [e for e in parse(mp.build(2)) if e[0] == 1 and e[2] == b"PCI   "]  # no functions, no PCI bus


def test_the_table_still_fits_with_the_most_pci_functions():
    from launcher.transports.pci_host import IntxRoute
    routes = tuple(IntxRoute(slot, 1, 5) for slot in range(mp.MOST_PCI_ROUTES))
    assert len(mp.build(mp.max_cpus(), pci_routes=routes)) <= mp.AREA
