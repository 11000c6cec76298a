"""virtio-pci on the real /dev/kvm: configuration cycles through ports 0xcf8/0xcfc take the
exit loop; once the guest enables memory space the BAR decodes and a queue notification is a
KVM ioeventfd (datamatch on the 16-bit index), never an exit; sizing the BAR moves it out and
back; the kvm backend's transport choice follows the kernel's config."""
import os
import time
from pathlib import Path

import pytest

from harness.fakes.backends import SeededEntropy
from launcher.devices.rng import RngDevice
from launcher.devspec import close_devices
from launcher.hypervisor.base import BootSpec, Outcome
from launcher.hypervisor.errors import TransportUnsupported
from launcher.hypervisor.kvm import KvmBackend
from launcher.hypervisor.kvm_virtio import KvmVirtioMmio
from launcher.hypervisor.kvm_virtio_pci import BAR_BASE, KvmVirtioPci
from launcher.io.service import QueueWorkers
from launcher.loader import KernelKind
from launcher.memory import GuestMemory
from launcher.transports.pci import BAR_SIZE, NOTIFY_OFFSET
from tests.unit import tiny_guests as g


def config_address(slot: int, reg: int) -> bytes:
    value = 0x8000_0000 | slot << 11 | reg
    return b"\xb8" + value.to_bytes(4, "little") + bytes.fromhex("66baf80cef")   # mov eax, imm; out 0xcf8, eax


def config_write16(slot: int, reg: int, value: int) -> bytes:
    return config_address(slot, reg) + bytes.fromhex("66bafc0c66b8") + value.to_bytes(2, "little") + b"\x66\xef"


def config_read32_to_uart(slot: int, reg: int) -> bytes:
    return config_address(slot, reg) + bytes.fromhex("66bafc0ced") + bytes.fromhex("66baf803ee")


def notify(addr: int, index: int) -> bytes:
    return b"\xbb" + addr.to_bytes(4, "little") + b"\x66\xc7\x03" + index.to_bytes(2, "little")


def run_guest(code: bytes, devices_count: int = 1):
    out = bytearray()
    with GuestMemory(4 << 20) as mem:
        mem.write(0x100000, code)
        with KvmBackend(mem, out.extend, irqchip=True) as backend:
            devices = []
            for _ in range(devices_count):
                dev = RngDevice(SeededEntropy())
                dev.runner = QueueWorkers(dev)
                devices.append(dev)
            bus = KvmVirtioPci(backend, mem, devices)
            try:
                backend.initialize(BootSpec(0x100000, 0x7000, KernelKind.ELF64))
                event = backend.run(time.monotonic() + 5)
                kicks = [_take(dev.runner.eventfd(0)) for dev in devices]
                return event, bytes(out), backend.stats.exits, bus, kicks
            finally:
                bus.close()
                close_devices(devices)


def _take(fd: int) -> int:
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


@pytest.mark.kvm
def test_enabled_bar_takes_notifications_as_ioeventfds():
    second = BAR_BASE + BAR_SIZE
    code = (config_write16(2, 0x04, 0x0006)                 # slot 2 (device 1): memory space + bus master
            + notify(second + NOTIFY_OFFSET, 0)             # queue 0's notification: an ioeventfd
            + config_read32_to_uart(2, 0x00)                # vendor id's low byte to the UART
            + g.HLT)
    event, out, exits, bus, kicks = run_guest(code, devices_count=2)
    assert event.outcome is Outcome.HALTED
    assert out == b"\xf4"                                   # 0x1af4
    assert kicks == [0, 1]
    assert exits.get("KVM_EXIT_MMIO", 0) == 0
    assert bus.slots[1].transport.mapped == second and bus.slots[1].fast_notify
    assert bus.slots[0].transport.mapped is None and not bus.slots[0].fast_notify


@pytest.mark.kvm
def test_a_disabled_bar_is_not_decoded():
    code = notify(BAR_BASE + NOTIFY_OFFSET, 0) + g.HLT      # memory space still off: nobody there
    event, out, exits, bus, kicks = run_guest(code)
    assert kicks == [0] and exits.get("KVM_EXIT_MMIO") == 1
    assert bus.slots[0].transport.metrics.notifies == 0


@pytest.mark.kvm
def test_bar_over_ram_is_refused_with_a_named_rule():
    code = (config_address(1, 0x10) + bytes.fromhex("66bafc0cb800001000ef")   # BAR0 = 0x100000 (RAM)
            + config_write16(1, 0x04, 0x0002) + g.HLT)
    event, out, exits, bus, kicks = run_guest(code)
    t = bus.slots[0].transport
    assert event.outcome is Outcome.HALTED
    assert t.mapped is None and t.metrics.rules_broken["BAR_OVERLAP"] == 1


def test_transport_choice_follows_the_kernel_config(tmp_path: Path):
    kernel = tmp_path / "vmlinuz-6.1.0-test"
    kernel.write_bytes(b"")
    assert KvmBackend.bus_for(None, kernel) is KvmVirtioMmio          # nothing beside it says otherwise
    (tmp_path / "config-6.1.0-test").write_text("CONFIG_VIRTIO_MMIO=m\n# CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is not set\n")
    assert KvmBackend.bus_for(None, kernel) is KvmVirtioPci
    (tmp_path / "config-6.1.0-test").write_text("CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y\n")
    assert KvmBackend.bus_for(None, kernel) is KvmVirtioMmio
    assert KvmBackend.bus_for("pci", kernel) is KvmVirtioPci


def test_transport_choice_from_system_map(tmp_path: Path):
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"")
    (tmp_path / "System.map").write_text("ffffffff81000000 T _stext\n")
    assert KvmBackend.bus_for(None, kernel) is KvmVirtioPci
    (tmp_path / "System.map").write_text("ffffffff81000000 T _stext\nffffffff81234000 t vm_cmdline_set\n")
    assert KvmBackend.bus_for(None, kernel) is KvmVirtioMmio


def test_other_backends_refuse_a_transport():
    from launcher.hypervisor.lguest import LguestBackend
    with pytest.raises(TransportUnsupported, match="--transport=pci: the lguest backend"):
        LguestBackend.bus_for("pci", Path("vmlinux"))
