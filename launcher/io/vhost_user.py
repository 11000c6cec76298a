"""vhost-user, the frontend side (QEMU docs/interop/vhost-user.rst): a device whose queues are
served by another process over a Unix socket, not by our service threads.

    frontend = VhostUserFrontend(sock, "virtiofsd")
    frontend.handshake()                  # GET_FEATURES, GET/SET_PROTOCOL_FEATURES, SET_OWNER
    device.runner = VhostUserRunner(frontend, device)

At DRIVER_OK the device starts its runner, which hands the backend the guest's memory (the
memfd, SET_MEM_TABLE) and each queue (SET_VRING_NUM/BASE/ADDR, SET_VRING_KICK = the eventfd
KVM's ioeventfd signals, SET_VRING_CALL = the device's KVM irqfd, SET_VRING_ENABLE); on reset or
close it takes them back (GET_VRING_BASE stops a ring).  Messages are a 12-byte header
(request, flags, size) and a payload; fds ride along as SCM_RIGHTS.  Every reply is checked
(the reply flag, the request it answers, its size) and a broken one, a closed socket or no
reply within REPLY_TIMEOUT is one VhostUserError line naming what went wrong.
"""
from __future__ import annotations

import array
import dataclasses
import logging
import os
import socket
import struct
import threading
from enum import IntEnum

from launcher.errors import DeviceError

log = logging.getLogger(__name__)

HEADER = struct.Struct("<III")          # request, flags, payload size
U64 = struct.Struct("<Q")
VRING_STATE = struct.Struct("<II")      # index, num
VRING_ADDR = struct.Struct("<IIQQQQ")   # index, flags, desc, used, avail, log (user addresses)
MEMORY_HEADER = struct.Struct("<II")    # nregions, padding
MEMORY_REGION = struct.Struct("<QQQQ")  # guest_phys_addr, memory_size, userspace_addr, mmap_offset

VERSION = 0x1                           # flags bits 0-1
FLAG_REPLY = 1 << 2
FLAG_NEED_REPLY = 1 << 3
VRING_NOFD = 1 << 8                     # SET_VRING_KICK/CALL payload: no fd follows
MAX_REGIONS = 8
MAX_PAYLOAD = 4096
REPLY_TIMEOUT = 10.0

F_PROTOCOL_FEATURES = 30                # a virtio feature bit that only vhost-user knows


class Request(IntEnum):
    """Front-end message types (the ones this frontend sends)."""
    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    SET_MEM_TABLE = 5
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    SET_VRING_ENABLE = 18


class ProtocolFeature(IntEnum):
    MQ = 0
    REPLY_ACK = 3


OUR_PROTOCOL_FEATURES = 1 << ProtocolFeature.REPLY_ACK


class VhostUserError(DeviceError):
    """The backend broke the protocol, refused a request, or went away."""


class BackendGone(VhostUserError):
    """The socket closed, or no reply came in time."""


@dataclasses.dataclass(frozen=True)
class MemoryRegion:
    guest_phys_addr: int
    size: int
    userspace_addr: int
    mmap_offset: int
    fd: int


class VhostUserFrontend:
    """One connection to a backend; every call is one request (and its reply when one is due).
    Thread-safe: the vCPU thread (DRIVER_OK) and close() may both talk."""

    def __init__(self, sock: socket.socket, name: str = "vhost-user backend", timeout: float = REPLY_TIMEOUT):
        self.sock = sock
        self.name = name
        self.timeout = timeout
        self.features = 0               # the backend's virtio features (GET_FEATURES)
        self.protocol_features = 0      # negotiated: theirs & ours
        self._lock = threading.Lock()

    # -- the handshake ---------------------------------------------------------------------------
    def handshake(self) -> None:
        self.features = self._get_u64(Request.GET_FEATURES)
        if self.features >> F_PROTOCOL_FEATURES & 1:
            theirs = self._get_u64(Request.GET_PROTOCOL_FEATURES)
            self.protocol_features = theirs & OUR_PROTOCOL_FEATURES
            self._send(Request.SET_PROTOCOL_FEATURES, U64.pack(self.protocol_features))
        self._set(Request.SET_OWNER, b"")

    @property
    def has_protocol_features(self) -> bool:
        return bool(self.features >> F_PROTOCOL_FEATURES & 1)

    def set_features(self, virtio_features: int) -> None:
        """The driver's choice, plus PROTOCOL_FEATURES when the backend offered it (it then
        starts rings disabled: SET_VRING_ENABLE turns them on)."""
        extra = 1 << F_PROTOCOL_FEATURES if self.has_protocol_features else 0
        self._set(Request.SET_FEATURES, U64.pack(virtio_features | extra))

    # -- memory and rings --------------------------------------------------------------------------
    def set_mem_table(self, regions: list[MemoryRegion]) -> None:
        if not 0 < len(regions) <= MAX_REGIONS:
            raise VhostUserError(f"SET_MEM_TABLE takes 1..{MAX_REGIONS} regions, not {len(regions)}")
        table = MEMORY_HEADER.pack(len(regions), 0) + b"".join(
            MEMORY_REGION.pack(r.guest_phys_addr, r.size, r.userspace_addr, r.mmap_offset) for r in regions)
        table += bytes(MEMORY_REGION.size * (MAX_REGIONS - len(regions)))
        self._set(Request.SET_MEM_TABLE, table, fds=[r.fd for r in regions])

    def set_vring_num(self, index: int, num: int) -> None:
        self._set(Request.SET_VRING_NUM, VRING_STATE.pack(index, num))

    def set_vring_base(self, index: int, base: int) -> None:
        self._set(Request.SET_VRING_BASE, VRING_STATE.pack(index, base))

    def set_vring_addr(self, index: int, desc: int, used: int, avail: int) -> None:
        self._set(Request.SET_VRING_ADDR, VRING_ADDR.pack(index, 0, desc, used, avail, 0))

    def set_vring_kick(self, index: int, fd: int) -> None:
        self._set(Request.SET_VRING_KICK, U64.pack(index), fds=[fd])

    def set_vring_call(self, index: int, fd: int) -> None:
        self._set(Request.SET_VRING_CALL, U64.pack(index), fds=[fd])

    def set_vring_enable(self, index: int, enable: bool) -> None:
        self._set(Request.SET_VRING_ENABLE, VRING_STATE.pack(index, int(enable)))

    def get_vring_base(self, index: int) -> int:
        """Stops ring `index`; returns the backend's next avail index for it."""
        with self._lock:
            self._send(Request.GET_VRING_BASE, VRING_STATE.pack(index, 0))
            got_index, base = VRING_STATE.unpack(self._reply(Request.GET_VRING_BASE, VRING_STATE.size))
        if got_index != index:
            raise VhostUserError(f"{self.name}: GET_VRING_BASE for ring {index} answered for ring {got_index}")
        return base

    def close(self) -> None:
        self.sock.close()

    # -- messages ------------------------------------------------------------------------------------
    def _get_u64(self, request: Request) -> int:
        with self._lock:
            self._send(request, b"")
            return U64.unpack(self._reply(request, U64.size))[0]

    def _set(self, request: Request, payload: bytes, fds: list[int] = ()) -> None:
        """A request that expects no reply, or an ack (u64 0) when REPLY_ACK was negotiated."""
        ack = bool(self.protocol_features >> ProtocolFeature.REPLY_ACK & 1)
        with self._lock:
            self._send(request, payload, fds, need_reply=ack)
            if ack:
                status = U64.unpack(self._reply(request, U64.size))[0]
                if status:
                    raise VhostUserError(f"{self.name} refused {request.name} (status {status:#x})")

    def _send(self, request: Request, payload: bytes, fds=(), need_reply: bool = False) -> None:
        flags = VERSION | (FLAG_NEED_REPLY if need_reply else 0)
        message = HEADER.pack(request, flags, len(payload)) + payload
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        try:
            self.sock.settimeout(self.timeout)
            sent = self.sock.sendmsg([message], ancillary)
            if sent < len(message):
                self.sock.sendall(message[sent:])
        except OSError as err:
            raise BackendGone(f"{self.name}: cannot send {request.name}: {err.strerror or err} "
                              f"(the backend closed the connection or exited)") from None

    def _reply(self, request: Request, size: int) -> bytes:
        got, flags, length = HEADER.unpack(self._read_exact(HEADER.size, request))
        if not flags & FLAG_REPLY or flags & 0x3 != VERSION:
            raise VhostUserError(f"{self.name}: the reply to {request.name} has flags {flags:#x}: a reply "
                                 f"carries the reply flag ({FLAG_REPLY:#x}) and version {VERSION}")
        if got != request:
            raise VhostUserError(f"{self.name}: asked {request.name} ({int(request)}), the reply is for request {got}")
        if length != size:
            raise VhostUserError(f"{self.name}: the reply to {request.name} holds {length} bytes, "
                                 f"the protocol says {size}")
        return self._read_exact(size, request)

    def _read_exact(self, size: int, request: Request) -> bytes:
        data = bytearray()
        try:
            self.sock.settimeout(self.timeout)
            while len(data) < size:
                chunk, ancdata, _, _ = self.sock.recvmsg(size - len(data), socket.CMSG_SPACE(4 * 8))
                _close_passed_fds(ancdata)      # no reply of ours carries fds: never leak them
                if not chunk:
                    raise BackendGone(f"{self.name} closed the connection instead of answering {request.name}")
                data += chunk
        except socket.timeout:
            raise BackendGone(f"{self.name}: no answer to {request.name} within {self.timeout:g} s") from None
        except OSError as err:
            raise BackendGone(f"{self.name}: reading the answer to {request.name}: {err.strerror or err}") from None
        return bytes(data)


def _close_passed_fds(ancdata) -> None:
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
            for fd in fds:
                os.close(fd)


class VhostUserRunner:
    """The runner of a device whose queues a vhost-user backend serves (device.runner).

    The transport and hypervisor see what they see of QueueWorkers: eventfd(index) for KVM's
    ioeventfd, notify(index) for a kick through the exit loop; use_call_fd(fd) gives it the
    device's irqfd.  start() (DRIVER_OK) hands the backend memory and rings; stop() (reset)
    takes the rings back; close() also ends the backend (`on_close`, e.g. the process)."""

    def __init__(self, frontend: VhostUserFrontend, device, on_close=lambda: None):
        self.frontend = frontend
        self.device = device
        self.on_close = on_close
        self._kick = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in device.queues]
        self.call_fd: int | None = None
        self.started: list[int] = []
        self.errors: list[BaseException] = []
        self.threads: list = []         # none: the backend's threads serve the queues
        self.closed = False

    def eventfd(self, index: int) -> int:
        return self._kick[index]

    def notify(self, index: int) -> None:
        os.eventfd_write(self._kick[index], 1)

    def use_call_fd(self, fd: int) -> None:
        self.call_fd = fd

    def fds(self) -> list[int]:
        return [] if self.closed else list(self._kick)

    def start(self) -> None:
        """Memory table, then each queue the driver set up; VhostUserError if the backend fails."""
        device, memory = self.device, self.device.memory
        if memory is None or getattr(memory, "fd", None) is None:
            raise VhostUserError(f"{device.name}: guest memory is not shared (a memfd), so the backend cannot map it")
        if self.call_fd is None:
            raise VhostUserError(f"{device.name}: no interrupt eventfd (a KVM irqfd) to give the backend as its call fd")
        frontend = self.frontend
        frontend.set_features(device.accepted)
        frontend.set_mem_table([MemoryRegion(0, memory.size, memory.host_address, 0, memory.fd)])
        user = memory.host_address
        for index, slot in enumerate(device.queues):
            if not slot.size:
                continue
            frontend.set_vring_num(index, slot.size)
            frontend.set_vring_base(index, 0)
            frontend.set_vring_addr(index, user + slot.desc_addr, user + slot.used_addr, user + slot.avail_addr)
            frontend.set_vring_kick(index, self._kick[index])
            frontend.set_vring_call(index, self.call_fd)
            self.started.append(index)
            if frontend.has_protocol_features:
                frontend.set_vring_enable(index, True)

    def stop(self) -> None:
        """Take every started ring back (GET_VRING_BASE stops it); a backend that is gone
        has nothing to give back, which is logged, not raised."""
        started, self.started = self.started, []
        try:
            for index in started:
                if self.frontend.has_protocol_features:
                    self.frontend.set_vring_enable(index, False)
                self.frontend.get_vring_base(index)
        except VhostUserError as err:
            log.warning("%s: stopping its rings: %s", self.device.name, err)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.stop()
        self.on_close()             # first: a backend exits when its connection closes, which
        self.frontend.close()       # would otherwise look like a death mid-run
        for fd in self._kick:
            os.close(fd)
