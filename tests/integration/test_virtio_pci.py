"""virtio over PCI (--transport=pci) in the recipe guest: the functions Linux finds on bus 0,
hvc0 (the command channel), a block disk read and written both ways, and a ping over a tap in
a namespace the test makes, all through the virtio-pci transport with INTx."""
import os

import pytest
from tests.integration.disk_checks import assert_disk_reads_and_writes

pytestmark = [pytest.mark.kvm, pytest.mark.slow]

PATTERN = os.urandom(64 << 10)


def test_block_console_and_net_over_pci(guest_factory, disk_image, tap_netns):
    disk = disk_image(size_mb=8, fs="raw", content=PATTERN)
    guest = guest_factory(block=disk, net=tap_netns, transport="pci", mem=96)

    ids = guest.run("cat /sys/bus/pci/devices/0000:00:0[1-3].0/device").stdout.split()
    assert ids == ["0x1043", "0x1042", "0x1041"]            # console, block, net in bus order
    assert guest.run("ls /sys/bus/pci/drivers/virtio-pci").stdout.count("0000:00:0") == 3
    assert guest.run("grep -c virtio_mmio /proc/iomem").stdout.strip() == "0"

    assert_disk_reads_and_writes(guest, disk, PATTERN)

    ping = tap_netns.run("busybox", "ping", "-c", "3", "-W", "5", tap_netns.guest_ip, capture_output=True, text=True)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    back = guest.run(f"ping -c 2 -W 5 {tap_netns.host_ip}", timeout=60)
    assert back.ok and " 0% packet loss" in back.stdout, back.output
    assert "virtio" in guest.run("cat /proc/interrupts").stdout
