"""The qemu backend's mapping of `boot` flags onto QEMU options, its refusals and `auto`, without
booting anything (the boots are tests/integration's, on both backends)."""
from __future__ import annotations

import pytest

from harness import backends, qemu
from harness.cli import build_parser, main
from harness.launch import GuestSpec
from launcher.hostquirks import HIDE_KVM_ENV, HostKind

FDS = qemu.ChardevFds(serial=7, hvc=8)


@pytest.fixture
def kernel(tmp_path):
    """A vmlinux (ELF header only) with a bzImage beside it, as the recipe's cache keeps them."""
    vmlinux = tmp_path / "vmlinux"
    vmlinux.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(57) + bytes(0x1000))
    header = bytearray(0x1000)
    header[0x1f1] = 4                          # setup_sects
    header[0x202:0x206] = b"HdrS"
    header[0x206:0x208] = (0x20f).to_bytes(2, "little")
    header[0x211] = 1                          # LOADED_HIGH
    (tmp_path / "bzImage").write_bytes(bytes(header))
    return vmlinux


def boot_args(*argv: str):
    return build_parser().parse_args(["boot", "--backend", "qemu", *argv])


def option_values(argv, option: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == option]


def test_a_plain_boot_maps_onto_microvm_with_the_serial_on_our_socket(kernel):
    plan = qemu.plan(boot_args("--initrd=/i.cpio", "96", str(kernel), "console=ttyS0", "quiet"), FDS,
                     accelerator="tcg")
    argv = plan.argv
    assert option_values(argv, "-M") == [qemu.MACHINE] and "acpi=off" in qemu.MACHINE
    assert option_values(argv, "-accel") == ["tcg"]
    assert option_values(argv, "-m") == ["96M"]
    assert option_values(argv, "-kernel") == [str(kernel.with_name("bzImage"))]     # QEMU boots the bzImage
    assert option_values(argv, "-initrd") == ["/i.cpio"]
    assert option_values(argv, "-append") == ["console=ttyS0 quiet"]    # nothing added: no kvm_pvm quirks
    assert "socket,id=serial,fd=7" in option_values(argv, "-chardev")
    assert {"-no-reboot", "-nodefaults", "-no-user-config"} <= set(argv)
    assert not plan.hvc and "virtconsole,chardev=hvc0" not in argv      # no devices: no hvc0 by default


def test_devices_keep_command_line_order_behind_hvc0(kernel, tmp_path):
    disk, ro = tmp_path / "disk.img", tmp_path / "ro.img"
    for path in (disk, ro):
        path.write_bytes(bytes(4096))
    args = boot_args(f"--block={disk}", "--rng", f"--block-ro={ro}", "--tunnet=10.0.0.1/24:52:54:00:12:34:56",
                     "64", str(kernel))
    plan = qemu.plan(args, FDS, tap_prefix="lhqt", accelerator="tcg")
    devices = option_values(plan.argv, "-device")
    assert devices == ["virtio-serial-device,max_ports=1", "virtconsole,chardev=hvc0", "virtio-blk-device,drive=blk0",
                       "virtio-rng-device", "virtio-blk-device,drive=blk2",
                       "virtio-net-device,netdev=net3,mac=52:54:00:12:34:56"]
    assert option_values(plan.argv, "-drive") == [f"file={disk},format=raw,if=none,id=blk0",
                                                  f"file={ro},format=raw,if=none,id=blk2,readonly=on"]
    assert option_values(plan.argv, "-netdev") == ["tap,id=net3,ifname=lhqt0,script=no,downscript=no"]
    assert plan.taps == (qemu.Tap("lhqt0", "10.0.0.1/24", None),)
    assert plan.hvc and "socket,id=hvc0,fd=8" in option_values(plan.argv, "-chardev")


def test_hvc_follows_the_kvm_backends_rule(kernel):
    assert qemu.plan(boot_args("--hvc=pty", "64", str(kernel)), FDS, accelerator="tcg").hvc
    assert not qemu.plan(boot_args("--hvc=none", "--rng", "64", str(kernel)), FDS, accelerator="tcg").hvc


def test_a_bridge_tap_is_attached_not_addressed(kernel):
    plan = qemu.plan(boot_args("--tunnet=bridge:br9", "64", str(kernel)), FDS, tap_prefix="t", accelerator="tcg")
    assert plan.taps == (qemu.Tap("t0", None, "br9"),)


@pytest.mark.parametrize("flag, says", [
    ("--username=nobody", "--username is the lguest Launcher's privilege drop"),
    ("--chroot=/tmp", "--chroot is the lguest Launcher's privilege drop"),
    ("--system-map=/x", "--system-map feeds our KVM backend's crash reports"),
    ("--hvc=stdio", "--hvc=stdio: the qemu backend's stdio is the 8250 console"),
])
def test_flags_qemu_cannot_honour_are_refused(kernel, flag, says):
    with pytest.raises(qemu.QemuUsage, match=says):
        qemu.plan(boot_args(flag, "64", str(kernel)), FDS, accelerator="tcg")


def test_a_refused_flag_is_status_2_and_one_line_before_qemu_starts(kernel, capsys, monkeypatch):
    monkeypatch.setattr(qemu, "available", lambda: "/nonexistent/qemu")     # never run
    from harness import qemu_relay
    monkeypatch.setattr(qemu_relay, "available", lambda: "/nonexistent/qemu")
    assert main(["boot", "--backend", "qemu", "--username=nobody", "64", str(kernel)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lguest-harness boot: usage: --username")


def test_a_vmlinux_without_a_bzimage_beside_it_is_refused_with_the_remedy(kernel):
    kernel.with_name("bzImage").unlink()
    with pytest.raises(qemu.QemuUsage, match="vmlinux, which QEMU cannot boot; give the bzImage"):
        qemu.bzimage_for(kernel)


def test_a_bzimage_is_booted_as_it_is(kernel):
    elsewhere = kernel.with_name("my-kernel")
    kernel.with_name("bzImage").rename(elsewhere)
    assert qemu.bzimage_for(elsewhere) == elsewhere


@pytest.mark.parametrize("present, host, want", [
    (True, HostKind.KVM, "kvm"), (True, HostKind.KVM_PVM, "tcg"), (False, HostKind.KVM, "tcg")])
def test_accel_is_kvm_only_on_ordinary_kvm(monkeypatch, present, host, want):
    monkeypatch.setattr(qemu, "kvm_present", lambda: present)
    assert qemu.accel(host) == want


def test_hide_kvm_switch_hides_it_from_every_detection(monkeypatch):
    monkeypatch.setenv(HIDE_KVM_ENV, "1")
    assert backends.lacks("kvm") == "/dev/kvm"
    assert qemu.accel(HostKind.KVM) == "tcg"
    name, why = backends.choose()
    assert name == "qemu" and HIDE_KVM_ENV in why


@pytest.mark.parametrize("host, want", [(HostKind.KVM, "kvm"), (HostKind.KVM_PVM, "qemu")])
def test_auto_chooses_by_the_host_kind(monkeypatch, host, want):
    monkeypatch.setattr(backends, "kvm_present", lambda: True)
    monkeypatch.setattr(backends, "detect_host", lambda: host)
    name, why = backends.choose()
    assert name == want and why


def test_guest_spec_for_qemu_gets_the_channel_on_hvc0(kernel):
    spec = GuestSpec(kernel=kernel, backend="qemu")
    argv = spec.argv()
    assert argv[argv.index("--backend") + 1] == "qemu" and "--hvc=pty" in argv
    assert "lhagent=hvc0" in spec.kernel_args()


def test_qemu_is_a_registered_backend_that_takes_over_boot():
    from launcher.hypervisor import BACKENDS, backend_class
    build_parser()
    assert backend_class("qemu").run_vmm and not backend_class("qemu").snapshots
    assert "qemu" in BACKENDS
