"""Device flags: parsed in command-line order behind the console, one clear line per bad value."""
import argparse

import pytest

from harness.fakes.backends import MemoryConsole, MemoryNet, SeededEntropy
from launcher import devspec as ds
from launcher.devices.block import VIRTIO_BLK_F_RO, BlockDevice
from launcher.devices.console import ConsoleDevice
from launcher.devices.net import VIRTIO_NET_F_MAC, NetDevice
from launcher.devices.rng import RngDevice


def parse(argv):
    parser = argparse.ArgumentParser()
    ds.add_device_arguments(parser)
    return ds.device_specs(parser.parse_args(argv))


@pytest.fixture
def disk(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(8 * 512))
    return path


def test_console_first_then_command_line_order(disk):
    specs = parse(["--rng", f"--block={disk}", "--tunnet=bridge:br0", f"--block-ro={disk}", "--rng"])
    assert specs == [ds.ConsoleSpec(), ds.RngSpec(), ds.BlockSpec(str(disk)), ds.NetSpec(bridge="br0"),
                     ds.BlockSpec(str(disk), read_only=True), ds.RngSpec()]


def test_no_flags_is_just_the_console():
    parser = argparse.ArgumentParser()
    ds.add_device_arguments(parser)
    args = parser.parse_args([])
    assert ds.device_specs(args) == [ds.ConsoleSpec()] and ds.flag_specs(args) == []


@pytest.mark.parametrize("arg,spec", [
    ("192.168.19.1", ds.NetSpec(interface="192.168.19.1/24")),
    ("10.0.0.1:52:54:00:12:34:56", ds.NetSpec(interface="10.0.0.1/8", mac=bytes.fromhex("525400123456"))),
    ("172.16.0.1/30", ds.NetSpec(interface="172.16.0.1/30")),
    ("150.1.1.1", ds.NetSpec(interface="150.1.1.1/16")),
    ("bridge:br0:2:a:b:c:d:e", ds.NetSpec(bridge="br0", mac=bytes([2, 10, 11, 12, 13, 14]))),
])
def test_tunnet_forms(arg, spec):
    assert ds.parse_tunnet(arg) == spec


@pytest.mark.parametrize("arg,message", [
    ("192.168.19", "--tunnet: failed to parse IP address '192.168.19'"),
    ("300.1.1.1", "failed to parse IP address '300.1.1.1'"),
    ("10.0.0.1:52:54:00:12:34", "failed to parse MAC address '52:54:00:12:34'"),
    ("10.0.0.1:zz:54:00:12:34:56", "failed to parse MAC address"),
    ("10.0.0.1:", "failed to parse MAC address ''"),
    ("bridge:", "must specify bridge name"),
    ("bridge::52:54:00:12:34:56", "must specify bridge name"),
    ("224.0.0.1", "not a unicast host address"),
    ("10.0.0.1/33", "prefix length '33'"),
])
def test_tunnet_errors(arg, message):
    with pytest.raises(ds.DeviceSpecError, match=None) as info:
        ds.parse_tunnet(arg)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_block_errors(tmp_path, disk):
    with pytest.raises(ds.DeviceSpecError, match="no such file"):
        parse([f"--block={tmp_path / 'missing.img'}"])
    with pytest.raises(ds.DeviceSpecError, match="is a directory"):
        parse([f"--block={tmp_path}"])


def test_build_devices_in_order_with_fake_backends(disk):
    nets = []
    backends = ds.HostBackends(console=MemoryConsole, net=lambda spec: nets.append(spec) or MemoryNet(),
                               entropy=SeededEntropy)
    specs = parse(["--tunnet=10.1.2.3:52:54:00:00:00:01", f"--block-ro={disk}", "--rng"])
    devices = ds.build_devices(specs, backends)
    try:
        assert [type(d) for d in devices] == [ConsoleDevice, NetDevice, BlockDevice, RngDevice]
        assert nets == [specs[1]]
        assert devices[1].offered >> VIRTIO_NET_F_MAC & 1 and devices[1].mac == bytes.fromhex("525400000001")
        assert devices[2].offered >> VIRTIO_BLK_F_RO & 1 and devices[2].capacity == 8
        assert all(d.runner is not None for d in devices)
    finally:
        ds.close_devices(devices)


def test_failed_build_closes_what_was_built(disk):
    consoles = []

    def console():
        consoles.append(MemoryConsole())
        return consoles[-1]

    def no_tap(spec):
        raise PermissionError(1, "Operation not permitted")

    with pytest.raises(ds.DeviceSpecError, match=r"tun 10\.0\.0\.1/8: Operation not permitted"):
        ds.build_devices(parse(["--tunnet=10.0.0.1"]), ds.HostBackends(console=console, net=no_tap))
    assert consoles[0].fileno() is None     # closed
