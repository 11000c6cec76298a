"""The vhost-user frontend and the virtio-fs device against a scripted backend on a socketpair."""
import mmap
import os

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from harness.fakes.mmio_driver import MmioDriver
from harness.fakes.vhost_user_backend import FakeVhostUserBackend
from launcher.devices.base import VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, DeviceStatus
from launcher.devices.fs import FsDevice, FsTagInvalid
from launcher.io.vhost_user import (
    F_PROTOCOL_FEATURES, FLAG_REPLY, HEADER, MEMORY_HEADER, MEMORY_REGION, U64, VERSION, VRING_ADDR,
    VRING_STATE, BackendGone, ProtocolFeature, Request, VhostUserError, VhostUserFrontend, VhostUserRunner,
)
from launcher.memory import GuestMemory
from launcher.transports.mmio import InterruptStatus, MmioReg, MmioTransport

FS_FEATURES = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX) | (1 << F_PROTOCOL_FEATURES)
REPLY_ACK = 1 << ProtocolFeature.REPLY_ACK


@pytest.fixture
def backend_factory():
    made = []

    def make(timeout=2.0, **options):
        sock, backend = FakeVhostUserBackend.pair(**options)
        frontend = VhostUserFrontend(sock, "fake backend", timeout=timeout)
        made.append((frontend, backend))
        return frontend, backend
    yield make
    for frontend, backend in made:
        frontend.close()
        backend.stop()


def test_handshake_negotiates_protocol_features_then_owner(backend_factory):
    frontend, backend = backend_factory(features=FS_FEATURES, protocol_features=REPLY_ACK | 1 << 40)
    frontend.handshake()
    assert backend.requests() == [Request.GET_FEATURES, Request.GET_PROTOCOL_FEATURES,
                                  Request.SET_PROTOCOL_FEATURES, Request.SET_OWNER]
    assert frontend.features == FS_FEATURES
    assert frontend.protocol_features == REPLY_ACK          # bit 40 is not ours to accept
    set_protocol = backend.received[2]
    assert U64.unpack(set_protocol[2])[0] == REPLY_ACK
    assert backend.received[3][1] & 0x8                      # SET_OWNER asked for its ack


def test_handshake_without_protocol_features_skips_them(backend_factory):
    frontend, backend = backend_factory(features=1 << VIRTIO_F_VERSION_1)
    frontend.handshake()
    assert backend.requests(at_least=2) == [Request.GET_FEATURES, Request.SET_OWNER]
    assert frontend.protocol_features == 0


def _fs_over_mmio(frontend, memory, call_fd):
    device = FsDevice("hostshare", frontend.features, strict=False)
    device.runner = VhostUserRunner(frontend, device)
    device.runner.use_call_fd(call_fd)
    transport = MmioTransport(device, memory, strict=True)
    return device, transport


def test_driver_ok_hands_the_backend_memory_and_rings(backend_factory):
    frontend, backend = backend_factory(features=FS_FEATURES, protocol_features=REPLY_ACK)
    frontend.handshake()
    call_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    with GuestMemory(1 << 20, shared=True) as memory:
        device, transport = _fs_over_mmio(frontend, memory, call_fd)
        driver = MmioDriver(transport, memory)
        assert driver.probe() == 26
        driver.init(queues=2)
        tag = bytes(driver.read_config(i, 1) for i in range(9))
        assert tag == b"hostshare" and driver.read_config(36, 4) == 1
        sent = backend.requests()[4:]
        assert sent[:2] == [Request.SET_FEATURES, Request.SET_MEM_TABLE]
        assert sent[2:] == [Request.SET_VRING_NUM, Request.SET_VRING_BASE, Request.SET_VRING_ADDR,
                            Request.SET_VRING_KICK, Request.SET_VRING_CALL, Request.SET_VRING_ENABLE] * 2
        features = U64.unpack(backend.received[4][2])[0]
        assert features >> F_PROTOCOL_FEATURES & 1 and features >> VIRTIO_F_VERSION_1 & 1
        # The memory table names all of RAM at our address, and its fd maps the same pages.
        table = backend.received[5][2]
        assert MEMORY_HEADER.unpack_from(table)[0] == 1
        assert MEMORY_REGION.unpack_from(table, MEMORY_HEADER.size) == (0, memory.size, memory.host_address, 0)
        [mem_fd] = backend.fds_of(Request.SET_MEM_TABLE)
        theirs = mmap.mmap(mem_fd, memory.size)
        memory.write(0x1234, b"shared")
        assert theirs[0x1234:0x123A] == b"shared"
        theirs.close()
        # Ring addresses are our user addresses of the driver's rings.
        addr = [VRING_ADDR.unpack(p) for r, _, p, _ in backend.received if r == Request.SET_VRING_ADDR]
        slot = device.queues[1]
        assert addr[1][2:5] == (memory.host_address + slot.desc_addr, memory.host_address + slot.used_addr,
                                memory.host_address + slot.avail_addr)
        # Kick: our eventfd, the one KVM's ioeventfd signals; call: the irqfd we were given.
        kick_fds = backend.fds_of(Request.SET_VRING_KICK)
        device.runner.notify(1)
        assert os.eventfd_read(kick_fds[1]) == 1
        for fd in backend.fds_of(Request.SET_VRING_CALL):
            os.eventfd_write(fd, 1)
        assert os.eventfd_read(call_fd) == 2
        # The driver sees a used buffer on every interrupt the backend raises.
        assert transport.read(MmioReg.INTERRUPT_STATUS, 4) & InterruptStatus.USED_BUFFER
        # Reset takes the rings back.
        driver.reset()
        tail = backend.requests()[-4:]
        assert tail == [Request.SET_VRING_ENABLE, Request.GET_VRING_BASE] * 2
        device.close()
    os.close(call_fd)


def test_a_refused_memory_table_fails_the_device_not_the_launcher(backend_factory):
    frontend, backend = backend_factory(features=FS_FEATURES, protocol_features=REPLY_ACK,
                                        nack=frozenset({Request.SET_MEM_TABLE}))
    frontend.handshake()
    call_fd = os.eventfd(0, os.EFD_CLOEXEC)
    with GuestMemory(1 << 20, shared=True) as memory:
        device, transport = _fs_over_mmio(frontend, memory, call_fd)
        driver = MmioDriver(transport, memory)
        driver.probe()
        driver.init(queues=2)
        assert device.status & DeviceStatus.DEVICE_NEEDS_RESET
        assert "refused SET_MEM_TABLE" in device.failure
        assert transport.read(MmioReg.INTERRUPT_STATUS, 4) & InterruptStatus.CONFIG_CHANGE
        device.close()
    os.close(call_fd)


def test_private_memory_is_refused_with_the_reason(backend_factory):
    frontend, _ = backend_factory(features=FS_FEATURES)
    frontend.handshake()
    call_fd = os.eventfd(0, os.EFD_CLOEXEC)
    with GuestMemory(1 << 20) as memory:
        device, transport = _fs_over_mmio(frontend, memory, call_fd)
        driver = MmioDriver(transport, memory)
        driver.probe()
        driver.init(queues=2)
        assert "not shared" in device.failure
        device.close()
    os.close(call_fd)


def test_features_the_backend_lacks_are_never_offered(backend_factory):
    frontend, _ = backend_factory(features=1 << VIRTIO_F_VERSION_1)
    frontend.handshake()
    with GuestMemory(1 << 20, shared=True) as memory:
        device, transport = _fs_over_mmio(frontend, memory, -1)
        assert not device.offered >> VIRTIO_RING_F_EVENT_IDX & 1
        assert device.offered >> VIRTIO_F_VERSION_1 & 1
        device.close()


def test_a_backend_that_hangs_up_is_one_line(backend_factory):
    frontend, _ = backend_factory(features=FS_FEATURES, close_after=1)
    with pytest.raises(BackendGone, match="GET_PROTOCOL_FEATURES.*(closed|Broken pipe)"):
        frontend.handshake()


def test_a_silent_backend_times_out(backend_factory):
    frontend, _ = backend_factory(reply_override=lambda request: b"", timeout=0.2)
    with pytest.raises(BackendGone, match="no answer to GET_FEATURES within 0.2 s"):
        frontend.handshake()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=st.integers(0, 40), flags=st.integers(0, 0xFF), size=st.integers(0, 64),
       tail=st.binary(max_size=64))
def test_any_reply_is_a_value_or_one_vhost_user_error(backend_factory, request, flags, size, tail):
    raw = HEADER.pack(request, flags, size) + tail
    frontend, _ = backend_factory(reply_override=lambda r: raw, timeout=0.1)
    try:
        frontend._get_u64(Request.GET_FEATURES)
    except VhostUserError as err:
        assert "\n" not in str(err)
    else:
        assert request == Request.GET_FEATURES and flags & FLAG_REPLY and flags & 3 == VERSION
        assert size == U64.size and len(tail) >= U64.size


def test_tags_are_checked():
    for bad in ("", "a" * 37, "with space", "a/b"):
        with pytest.raises(FsTagInvalid):
            FsDevice(bad, FS_FEATURES)
    assert FsDevice("a" * 36, FS_FEATURES).config[:36] == b"a" * 36


def test_vring_state_layout():
    assert VRING_STATE.size == 8 and VRING_ADDR.size == 40 and MEMORY_REGION.size == 32
