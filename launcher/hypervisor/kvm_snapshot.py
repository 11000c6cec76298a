"""KVM guest state for snapshots: one vCPU and the VM's in-kernel devices, as plain data.

Every piece is the ioctl's own struct, carried as an opaque blob of the size this host's
<linux/kvm.h> gives it (base64 in the snapshot), so nothing here hand-decodes a layout:
a snapshot is only ever restored on a host whose structs have the same sizes, which
restore checks first (struct_sizes()).

What is saved, and the order it is restored in (Firecracker's order; measured on kvm_pvm,
kvm-host-notes.md "Snapshot/restore on kvm_pvm"):
    vCPU  MP_STATE, REGS, SREGS, FPU, XSAVE, XCRS, DEBUGREGS, LAPIC, MSRS, VCPU_EVENTS
          -- the LAPIC before the MSRs so the TSC deadline lands on a configured timer;
          every MSR in KVM_GET_MSR_INDEX_LIST that reads back (LSTAR carries the
          kvm_pvm syscall workaround: without it the first syscall panics)
    VM    PIT2, CLOCK (flags cleared: the clock carries on from the saved value), and
          IRQCHIP PIC master, PIC slave, IOAPIC
The vCPU must be out of KVM_RUN with any port or MMIO access it exited for completed
(complete_pending_io: one KVM_RUN with immediate_exit=1), or that access is lost.
"""
from __future__ import annotations

import base64
import errno

from native.kvm import ffi, lib

from launcher.hypervisor import kvm_clock
from launcher.hypervisor.errors import IoctlFailed
from launcher.hypervisor.kvm_sys import ioctl

MSR_BATCH = 256

# (name, struct, GET ioctl, SET ioctl, capability needed or None)
VCPU_BLOBS = (
    ("mp_state", "struct kvm_mp_state", "KVM_GET_MP_STATE", "KVM_SET_MP_STATE", None),
    ("regs", "struct kvm_regs", "KVM_GET_REGS", "KVM_SET_REGS", None),
    ("sregs", "struct kvm_sregs", "KVM_GET_SREGS", "KVM_SET_SREGS", None),
    ("fpu", "struct kvm_fpu", "KVM_GET_FPU", "KVM_SET_FPU", None),
    ("xsave", "struct kvm_xsave", "KVM_GET_XSAVE", "KVM_SET_XSAVE", "KVM_CAP_XSAVE"),
    ("xcrs", "struct kvm_xcrs", "KVM_GET_XCRS", "KVM_SET_XCRS", "KVM_CAP_XCRS"),
    ("debugregs", "struct kvm_debugregs", "KVM_GET_DEBUGREGS", "KVM_SET_DEBUGREGS", "KVM_CAP_DEBUGREGS"),
    ("lapic", "struct kvm_lapic_state", "KVM_GET_LAPIC", "KVM_SET_LAPIC", None),
)
# Restored after the MSRs (the pending-event state refers to the registers above).
VCPU_LATE_BLOBS = (
    ("vcpu_events", "struct kvm_vcpu_events", "KVM_GET_VCPU_EVENTS", "KVM_SET_VCPU_EVENTS", "KVM_CAP_VCPU_EVENTS"),
)
IRQCHIPS = (("pic_master", "KVM_IRQCHIP_PIC_MASTER"), ("pic_slave", "KVM_IRQCHIP_PIC_SLAVE"),
            ("ioapic", "KVM_IRQCHIP_IOAPIC"))


class StateMismatch(IoctlFailed):
    """Saved state does not fit this host (struct sizes, capabilities, TSC rate)."""


def struct_sizes() -> dict[str, int]:
    names = [b[1] for b in VCPU_BLOBS + VCPU_LATE_BLOBS] + [
        "struct kvm_irqchip", "struct kvm_pit_state2", "struct kvm_clock_data", "struct kvm_msr_entry"]
    return {name.split()[1]: ffi.sizeof(name) for name in names}


def encode(cdata) -> str:
    return base64.b64encode(bytes(ffi.buffer(cdata))).decode("ascii")


def decode_into(text: str, ctype: str):
    raw = base64.b64decode(text.encode("ascii"), validate=True)
    cdata = ffi.new(ctype + " *")
    if len(raw) != ffi.sizeof(cdata[0]):
        raise StateMismatch(f"saved {ctype} is {len(raw)} bytes, this host's is {ffi.sizeof(cdata[0])}")
    ffi.memmove(cdata, raw, len(raw))
    return cdata


# -- MSRs -------------------------------------------------------------------------------------
def msr_index_list(system_fd: int) -> list[int]:
    """KVM_GET_MSR_INDEX_LIST, grown until it fits."""
    count = 64
    while True:
        msr_list = ffi.new("struct kvm_msr_list *", {"nmsrs": count, "indices": count})
        msr_list.nmsrs = count
        r = lib.lh_ioctl(system_fd, lib.KVM_GET_MSR_INDEX_LIST, msr_list)
        if r == -errno.E2BIG and count < 65536:
            count = max(count * 2, msr_list.nmsrs)
            continue
        if r < 0:
            ioctl(system_fd, lib.KVM_GET_MSR_INDEX_LIST, msr_list)   # raises with the name
        return [msr_list.indices[i] for i in range(msr_list.nmsrs)]


def _msrs(entries: list[tuple[int, int]]):
    msrs = ffi.new("struct kvm_msrs *", {"nmsrs": len(entries), "entries": max(len(entries), 1)})
    msrs.nmsrs = len(entries)
    for i, (index, data) in enumerate(entries):
        msrs.entries[i].index, msrs.entries[i].data = index, data
    return msrs


def read_msrs(vcpu_fd: int, indices: list[int]) -> tuple[list[tuple[int, int]], list[int]]:
    """(index, value) for every MSR that reads back, and the indices that did not.

    KVM_GET_MSRS stops at the first MSR it cannot read and returns how many it read."""
    values, unreadable = [], []
    pending = list(indices)
    while pending:
        batch = pending[:MSR_BATCH]
        msrs = _msrs([(i, 0) for i in batch])
        done = ioctl(vcpu_fd, lib.KVM_GET_MSRS, msrs)
        values += [(msrs.entries[i].index, msrs.entries[i].data) for i in range(done)]
        if done < len(batch):
            unreadable.append(batch[done])
            done += 1
        pending = pending[done:]
    return values, unreadable


def write_msrs(vcpu_fd: int, values: list[tuple[int, int]]) -> None:
    msrs = _msrs(values)
    done = ioctl(vcpu_fd, lib.KVM_SET_MSRS, msrs)
    if done != len(values):
        index = values[done][0]
        raise StateMismatch(f"KVM_SET_MSRS stopped at MSR {index:#x} ({done} of {len(values)} set)")


# -- vCPU ----------------------------------------------------------------------------------------
def _has(system, cap: str | None) -> bool:
    return cap is None or bool(system.has(getattr(lib, cap)))


def complete_pending_io(vcpu) -> None:
    """One KVM_RUN with immediate_exit=1: KVM finishes the port/MMIO access the vCPU last
    exited for (an IN's data goes into its register) and returns without entering the guest."""
    vcpu.immediate_exit = 1
    try:
        vcpu.run()
    finally:
        vcpu.immediate_exit = 0


def save_vcpu(system, vcpu) -> dict:
    state: dict = {}
    for name, ctype, get, _set, cap in VCPU_BLOBS + VCPU_LATE_BLOBS:
        if not _has(system, cap):
            continue
        cdata = ffi.new(ctype + " *")
        ioctl(vcpu.fd, getattr(lib, get), cdata)
        state[name] = encode(cdata)
    values, unreadable = read_msrs(vcpu.fd, msr_index_list(system.fd))
    state["msrs"] = [[index, value] for index, value in values]
    state["msrs_unreadable"] = unreadable
    return state


def restore_vcpu(system, vcpu, state: dict) -> None:
    for name, ctype, _get, set_, cap in VCPU_BLOBS:
        _set_blob(system, vcpu.fd, state, name, ctype, set_, cap)
    write_msrs(vcpu.fd, [(int(i), int(v)) for i, v in state["msrs"]])
    for name, ctype, _get, set_, cap in VCPU_LATE_BLOBS:
        _set_blob(system, vcpu.fd, state, name, ctype, set_, cap)


def _set_blob(system, fd: int, state: dict, name: str, ctype: str, request: str, cap: str | None) -> None:
    if name not in state:
        if _has(system, cap):
            raise StateMismatch(f"the snapshot has no {name} state")
        return
    if not _has(system, cap):
        raise StateMismatch(f"the snapshot has {name} state but this host's KVM lacks {cap}")
    ioctl(fd, getattr(lib, request), decode_into(state[name], ctype))


# -- the VM's in-kernel devices ---------------------------------------------------------------------
def save_vm(vm_fd: int) -> dict:
    state: dict = {}
    pit = ffi.new("struct kvm_pit_state2 *")
    ioctl(vm_fd, lib.KVM_GET_PIT2, pit)
    state["pit2"] = encode(pit)
    clock = ffi.new("struct kvm_clock_data *")
    ioctl(vm_fd, lib.KVM_GET_CLOCK, clock)
    state["clock"] = encode(clock)
    for name, chip in IRQCHIPS:
        irqchip = ffi.new("struct kvm_irqchip *")
        irqchip.chip_id = getattr(lib, chip)
        ioctl(vm_fd, lib.KVM_GET_IRQCHIP, irqchip)
        state[name] = encode(irqchip)
    return state


def restore_vm(vm_fd: int, state: dict) -> None:
    ioctl(vm_fd, lib.KVM_SET_PIT2, decode_into(state["pit2"], "struct kvm_pit_state2"))
    # No KVM_CLOCK_REALTIME: carry on from the saved value, no jump (as a cold boot starts at 0).
    kvm_clock.set_clock(vm_fd, decode_into(state["clock"], "struct kvm_clock_data").clock)
    for name, chip in IRQCHIPS:
        irqchip = decode_into(state[name], "struct kvm_irqchip")
        if irqchip.chip_id != getattr(lib, chip):
            raise StateMismatch(f"saved {name} state is for irqchip {irqchip.chip_id}")
        ioctl(vm_fd, lib.KVM_SET_IRQCHIP, irqchip)
