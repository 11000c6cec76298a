"""Debian's stock kernel (harness.nested's cached bzImage) with its virtio modules in a
harness-built initramfs, with --cpus 2: it reaches user space with both CPUs, reads and writes a
virtio block disk and answers a ping over a tap in a namespace the test makes, all over virtio-pci,
which the launcher picks by itself (the config beside the kernel has no virtio-mmio command-line
devices); with two vCPUs the MP table routes each function's INTx (launcher.hypervisor.mptable).
Ordinary KVM only: on kvm_pvm no unmodified kernel reaches user space (kvm-host-notes.md)."""
import os

import pytest

from harness.stock_guest import stock_guest
from tests.integration.disk_checks import assert_disk_reads_and_writes

pytestmark = [pytest.mark.kvm, pytest.mark.slow, pytest.mark.ordinary_kvm]

PATTERN = os.urandom(64 << 10)


@pytest.fixture(scope="module")
def stock(tmp_path_factory):
    return stock_guest(tmp_path_factory.mktemp("stock"))


def test_stock_kernel_two_cpus_block_and_net_over_pci(stock, host_quirks, guest_factory, disk_image, tap_netns):
    if "kvm_pvm_quirks" in host_quirks:
        pytest.skip("kvm_pvm runs only the recipe kernel with its compatibility patch; "
                    "this test runs in the ordinary-KVM stage (harness.nested)")
    vmlinuz, initrd = stock
    disk = disk_image(size_mb=8, fs="raw", content=PATTERN)
    guest = guest_factory(kernel=vmlinuz, initrd=initrd, block=disk, net=tap_netns, mem=256, cpus=2)

    release = vmlinuz.name.removeprefix("vmlinuz-")
    assert guest.run("uname -r").stdout.strip() == release
    assert guest.run("grep -c ^processor /proc/cpuinfo").stdout == "2\n"
    ids = guest.run("cat /sys/bus/pci/devices/0000:00:0[1-3].0/device").stdout.split()
    assert ids == ["0x1043", "0x1042", "0x1041"]

    assert_disk_reads_and_writes(guest, disk, PATTERN)

    # Debian's kernel has no ip= autoconfiguration (IP_PNP): the address is set from user space.
    up = guest.run(f"ip link set eth0 up && ip addr add {tap_netns.guest_ip}/24 dev eth0")
    assert up.ok, up.output
    ping = tap_netns.run("busybox", "ping", "-c", "3", "-W", "5", tap_netns.guest_ip, capture_output=True, text=True)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    back = guest.run(f"ping -c 2 -W 5 {tap_netns.host_ip}", timeout=60)
    assert back.ok and " 0% packet loss" in back.stdout, back.output
