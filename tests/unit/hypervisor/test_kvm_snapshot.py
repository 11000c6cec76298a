"""KVM snapshots on the real /dev/kvm: a tiny guest paused mid-output, saved, and continued in
a new VM over a copy-on-write mapping of its memory prints exactly the rest, once."""
import json
import time

import pytest

from launcher.hypervisor import kvm_snapshot
from launcher.hypervisor.base import BootSpec, Outcome
from launcher.hypervisor.kvm import KvmBackend
from launcher.loader import KernelKind
from launcher.memory import GuestMemory
from tests.unit import tiny_guests as g

pytestmark = pytest.mark.kvm

MEM = 4 << 20
ALPHABET = bytes(range(ord("a"), ord("z") + 1))
# mov dx, 0x3f8; mov al, 'a'; 1: out dx, al; inc al; cmp al, 'z'+1; jne 1b; then reset
COUNT = g.MOV_DX_COM1 + bytes.fromhex("b061") + bytes.fromhex("ee" "fec0" "3c7b" "75f9") + g.RESET + g.SPIN


def test_a_guest_paused_mid_output_continues_in_a_new_vm(tmp_path):
    out = bytearray()
    with GuestMemory(MEM) as mem:
        mem.write(0x100000, COUNT)
        with KvmBackend(mem, lambda data: _pause_after(backend, out, data, 10), irqchip=True) as backend:
            backend.initialize(BootSpec(0x100000, 0x7000, KernelKind.ELF64))
            first = backend.run(time.monotonic() + 10)
            assert first.outcome is Outcome.PAUSED
            state = json.loads(json.dumps(backend.save_state()))
        mem.save_sparse(tmp_path / "memory.raw")
    assert bytes(out) == ALPHABET[:10]

    rest = bytearray()
    with GuestMemory.from_file(tmp_path / "memory.raw", MEM) as mem:
        with KvmBackend(mem, rest.extend, irqchip=True) as backend:
            backend.restore_state(state)
            second = backend.run(time.monotonic() + 10)
    assert second.outcome is Outcome.REBOOT
    assert bytes(out + rest) == ALPHABET         # nothing lost, nothing printed twice


def _pause_after(backend, out: bytearray, data: bytes, count: int) -> None:
    out.extend(data)
    if len(out) == count:
        backend.request_stop(Outcome.PAUSED, "test")


def test_state_holds_every_readable_msr_and_the_vm_devices():
    with GuestMemory(MEM) as mem:
        mem.write(0x100000, g.say(b"x") + g.RESET)
        with KvmBackend(mem, lambda data: None, irqchip=True) as backend:
            backend.initialize(BootSpec(0x100000, 0x7000, KernelKind.ELF64))
            backend.run(time.monotonic() + 10)
            state = backend.save_state()
            index_list = kvm_snapshot.msr_index_list(backend._system.fd)
    saved = {index for index, _ in state["vcpu"]["msrs"]}
    assert saved | set(state["vcpu"]["msrs_unreadable"]) == set(index_list)
    assert 0xC0000082 in saved                   # MSR_LSTAR: the kvm_pvm syscall workaround lives there
    for key in ("regs", "sregs", "fpu", "lapic", "mp_state"):
        assert key in state["vcpu"]
    assert set(state["vm"]) == {"pit2", "clock", "pic_master", "pic_slave", "ioapic"}


def test_state_from_another_tsc_rate_or_struct_layout_is_refused():
    with GuestMemory(MEM) as mem:
        mem.write(0x100000, g.RESET)
        with KvmBackend(mem, lambda data: None, irqchip=True) as backend:
            backend.initialize(BootSpec(0x100000, 0x7000, KernelKind.ELF64))
            backend.run(time.monotonic() + 10)
            state = backend.save_state()
            with pytest.raises(kvm_snapshot.StateMismatch, match="TSC ran at 1 kHz"):
                backend.check_state(dict(state, tsc_khz=1))
            sizes = dict(state["struct_sizes"], kvm_regs=1)
            with pytest.raises(kvm_snapshot.StateMismatch, match="other sizes"):
                backend.check_state(dict(state, struct_sizes=sizes))
