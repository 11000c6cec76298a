"""virtio-net (5.1): frames through the in-memory pair, and through a real tap inside a
network namespace this test creates and removes (no traffic leaves the namespace)."""
import os
import socket
import struct
import threading
import time
import uuid

import pytest

from harness.fakes.backends import net_pair
from harness.fakes.backends_bench import DeviceBench
from launcher.devices.base import WrongDirectionBuffers, feature_bits
from launcher.devices.net import (
    LEGACY_HDR_SIZE, ORIGINAL_FEATURES, RECEIVEQ, TRANSMITQ, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_MRG_RXBUF, NetDevice, NetHdr, NetHeaderTooShort, parse_mac,
)
from launcher.io.fdutil import readable_now

GUEST_MAC = bytes.fromhex("020000000002")
ETH_TYPE = 0x88B5          # IEEE local experimental: nothing in the stack answers it
HDR = NetHdr().pack()      # 10 zero bytes: no offload


def frame(payload: bytes, dst=b"\xff" * 6, src=GUEST_MAC) -> bytes:
    return dst + src + struct.pack("!H", ETH_TYPE) + payload.ljust(46, b"\0")


def net_bench(features=ORIGINAL_FEATURES, accepted=None, threads=False, strict=True, mac=GUEST_MAC):
    dev_end, host_end = net_pair()
    bench = DeviceBench(NetDevice(dev_end, mac=mac, features=features, strict=strict), threads=threads)
    bench.negotiate(accepted)
    return bench, host_end


def test_config_and_features():
    dev = NetDevice(net_pair()[0], mac="02:00:00:00:00:02")
    assert dev.device_id == 1
    assert bytes(dev.config) == GUEST_MAC + b"\0\0"
    assert dev.offered == ORIGINAL_FEATURES | feature_bits(VIRTIO_NET_F_MAC)
    plain = NetDevice(net_pair()[0])
    assert bytes(plain.config) == bytes(8)
    assert not plain.offered >> VIRTIO_NET_F_MAC & 1
    with pytest.raises(ValueError):
        parse_mac("02:00:00")


def test_frames_round_trip_in_memory():
    bench, host = net_bench()
    with bench:
        tx, rx = bench.driver(TRANSMITQ), bench.driver(RECEIVEQ)
        out = frame(b"guest to host")
        tx.add([HDR, out], [])
        tx.kick()
        bench.process(TRANSMITQ)
        assert tx.reap()[0][1] == 0
        assert host.take() == HDR + out
        rx.add([], [1526])
        rx.kick()
        assert bench.process(RECEIVEQ) is False       # nothing to receive yet
        inbound = NetHdr(flags=2).pack() + frame(b"host to guest")   # DATA_VALID passes through
        host.inject(inbound)
        assert bench.process(RECEIVEQ) is True
        assert rx.reap() == [(0, len(inbound), inbound)]


def test_received_flags_are_zero_when_guest_csum_was_not_negotiated():
    bench, host = net_bench(accepted=feature_bits(VIRTIO_NET_F_CSUM))      # no GUEST_* offloads
    with bench:
        rx = bench.driver(RECEIVEQ)
        rx.add([], [1526])
        rx.kick()
        payload = frame(b"forwarded by a bridge")
        host.inject(NetHdr(flags=2).pack() + payload)       # tun's DATA_VALID
        assert bench.process(RECEIVEQ) is True
        [(_, length, data)] = rx.reap()
    assert NetHdr.unpack(data).flags == 0 and data[LEGACY_HDR_SIZE:length] == payload   # 5.1.6.4.1


def test_header_grows_with_mrg_rxbuf_and_num_buffers_is_one():
    features = ORIGINAL_FEATURES | feature_bits(VIRTIO_NET_F_MRG_RXBUF)
    bench, host = net_bench(features=features)
    with bench:
        dev = bench.device
        assert dev.hdr_size == 12 and dev.backend.hdr_size == 12
        rx = bench.driver(RECEIVEQ)
        rx.add([], [12, 1514])
        rx.kick()
        inbound = NetHdr().pack(12)[:10] + b"\0\0" + frame(b"x")   # num_buffers left 0 by host
        host.inject(inbound)
        bench.process(RECEIVEQ)
        [(_, n, data)] = rx.reap()
        assert n == len(inbound)
        assert struct.unpack_from("<H", data, 10) == (1,)
        assert data[12:] == frame(b"x")


def test_backend_told_accepted_offloads():
    bench, _ = net_bench(accepted=feature_bits(VIRTIO_NET_F_GUEST_CSUM))
    with bench:
        assert bench.device.backend.offloads.csum
        assert not bench.device.backend.offloads.tso4
        assert bench.device.hdr_size == 10


HOSTILE = [
    ("rx with readable buffer", RECEIVEQ, [b"x" * 20], [1514], WrongDirectionBuffers),
    ("tx with writable buffer", TRANSMITQ, [HDR + frame(b"")], [64], WrongDirectionBuffers),
    ("tx shorter than header", TRANSMITQ, [b"\0" * 6], [], NetHeaderTooShort),
    ("rx shorter than header", RECEIVEQ, [], [8], NetHeaderTooShort),
]


@pytest.mark.parametrize("name,queue,readable,writable,error", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_chains(name, queue, readable, writable, error):
    bench, host = net_bench(strict=False)
    with bench:
        host.inject(HDR + frame(b"waiting"))
        drv = bench.driver(queue)
        drv.add(readable, writable)
        drv.kick()
        bench.process(queue)
        assert drv.reap()[0][1] == 0
        assert bench.device.metrics.guest_faults == 1
    bench, host = net_bench(strict=True)
    with bench:
        host.inject(HDR + frame(b"waiting"))
        bench.driver(queue).add(readable, writable)
        bench.driver(queue).kick()
        with pytest.raises(error):
            bench.process(queue)


def test_threaded_traffic_both_ways():
    bench, host = net_bench(threads=True)
    with bench:
        tx, rx = bench.driver(TRANSMITQ), bench.driver(RECEIVEQ)
        for _ in range(4):
            rx.add([], [1526])
        rx.kick()
        for k in range(4):
            host.inject(HDR + frame(b"in %d" % k))
        got = bench.wait_used(RECEIVEQ, 4)
        assert [g[2][10:] for g in got] == [frame(b"in %d" % k) for k in range(4)]
        for k in range(3):
            tx.add([HDR, frame(b"out %d" % k)], [])
        tx.kick()
        assert [host.take() for _ in range(3)] == [HDR + frame(b"out %d" % k) for k in range(3)]
        bench.trigger.wait_for(RECEIVEQ)
    assert bench.workers.errors == []


# -- a real tap in a namespace of our own --------------------------------------------------------

ETH_P_ALL = 0x0003


@pytest.fixture
def netns():
    from pyroute2 import netns as pr_netns
    name = f"lgh-test-{uuid.uuid4().hex[:8]}"
    pr_netns.create(name)
    try:
        yield name
    finally:
        pr_netns.remove(name)
    assert name not in pr_netns.listnetns()


def sniffer(netns_name, ifname):
    from pyroute2 import netns as pr_netns
    sock = pr_netns.create_socket(netns_name, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((ifname, 0))
    sock.settimeout(5)
    return sock


def wait_for_frame(sock, payload_marker, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data, addr = sock.recvfrom(65536)
        if payload_marker in data and addr[2] != socket.PACKET_OUTGOING:
            return data
    raise TimeoutError(f"{payload_marker!r} never showed up on the tap")


def test_frames_cross_a_real_tap(netns):
    from launcher.io.tap import TapBackend
    tap = TapBackend("lghtap%d", netns=netns, address="10.213.0.1/24")
    bench = DeviceBench(NetDevice(tap, mac=GUEST_MAC, strict=True), threads=True)
    with bench:
        bench.negotiate()
        assert tap.name.startswith("lghtap")
        sock = sniffer(netns, tap.name)
        try:
            # guest -> tap: the frame appears on the host's side of the tap
            out = frame(b"from the guest " + os.urandom(4).hex().encode())
            bench.driver(TRANSMITQ).add([HDR, out], [])
            bench.driver(TRANSMITQ).kick()
            seen = wait_for_frame(sock, out[14:40])
            assert seen[:len(out)] == out
            # tap -> guest: a frame sent on the tap reaches a guest rx buffer
            rx = bench.driver(RECEIVEQ)
            for _ in range(8):
                rx.add([], [1526])
            rx.kick()
            inbound = frame(b"from the host " + os.urandom(4).hex().encode(), dst=GUEST_MAC,
                            src=bytes.fromhex("020000000001"))
            sock.send(inbound)
            deadline = time.monotonic() + 5
            found = None
            while found is None and time.monotonic() < deadline:
                for _, n, data in rx.reap():
                    if data[10:n] == inbound:
                        found = data
                time.sleep(0.005)
            assert found is not None, "the frame sent on the tap never reached the guest"
            assert found[:10] == HDR or found[0] & 2      # no offload, or DATA_VALID only
        finally:
            sock.close()
    assert tap.closed
    assert bench.workers.errors == []


def test_tap_offloads_follow_accepted_features(netns):
    from launcher.io.tap import TUN_F_CSUM, TUN_F_TSO4, TapBackend, offload_flags
    assert offload_flags(False, True, True, True) == 0
    assert offload_flags(True, True, False, False) == TUN_F_CSUM | TUN_F_TSO4
    tap = TapBackend(netns=netns, up=False)
    try:
        assert not readable_now(tap.fileno())
        assert tap.recv_into([memoryview(bytearray(64))]) is None
        from launcher.devices.net import Offloads
        tap.configure(12, Offloads(csum=True, tso4=True, tso6=True, ecn=True))
    finally:
        tap.close()


def test_reset_mid_traffic_leaves_no_threads():
    bench, host = net_bench(threads=True, strict=False)
    with bench:
        rx, tx = bench.driver(RECEIVEQ), bench.driver(TRANSMITQ)
        for _ in range(8):
            rx.add([], [1526])
        rx.kick()
        for k in range(20):
            host.inject(HDR + frame(b"flood %d" % k))
            if k % 4 == 0:
                tx.add([HDR, frame(b"out %d" % k)], [])
                tx.kick()
        assert len(bench.workers.threads) == 2
        bench.device.set_status(0)
        assert bench.workers.threads == []
        assert not bench.device.active
        assert [t for t in threading.enumerate() if t.name.startswith("net-")] == []
    assert bench.workers.errors == []


def test_tap_attached_to_a_bridge(netns):
    from pyroute2 import IPRoute
    from launcher.io.tap import TapBackend, TapError
    with IPRoute(netns=netns) as ipr:
        ipr.link("add", ifname="lghbr0", kind="bridge")
        bridge_index = ipr.link_lookup(ifname="lghbr0")[0]
    tap = TapBackend("lghtap%d", netns=netns, bridge="lghbr0")
    try:
        with IPRoute(netns=netns) as ipr:
            link = ipr.get_links(ipr.link_lookup(ifname=tap.name)[0])[0]
            assert link.get_attr("IFLA_MASTER") == bridge_index
    finally:
        tap.close()
    with pytest.raises(TapError, match="bridge 'nope' does not exist"):
        TapBackend(netns=netns, bridge="nope")
