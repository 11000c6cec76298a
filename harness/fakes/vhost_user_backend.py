"""A scripted vhost-user backend on one end of a socketpair, for tests of the frontend.

    sock, backend = FakeVhostUserBackend.pair(features=..., protocol_features=...)
    frontend = VhostUserFrontend(sock)
    ...
    backend.received          # [(Request, flags, payload, [fds])], every message in order
    backend.stop()

It answers GET_FEATURES, GET_PROTOCOL_FEATURES and GET_VRING_BASE, acks NEED_REPLY requests
(or refuses `nack`), keeps the fds it was sent (tests map the memfd, write the call fd), and
can misbehave: `reply_override(request) -> bytes | None` replaces a reply with raw bytes,
`close_after` hangs up after that many messages.
"""
from __future__ import annotations

import array
import os
import socket
import threading
import time

from launcher.io.vhost_user import (
    FLAG_NEED_REPLY, FLAG_REPLY, HEADER, U64, VERSION, VRING_STATE, Request,
)


class FakeVhostUserBackend:
    def __init__(self, sock: socket.socket, *, features: int = 0, protocol_features: int = 0,
                 nack: frozenset = frozenset(), reply_override=None, close_after: int | None = None):
        self.sock = sock
        self.features = features
        self.protocol_features = protocol_features
        self.nack = nack
        self.reply_override = reply_override or (lambda request: None)
        self.close_after = close_after
        self.received: list[tuple] = []
        self.vring_base: dict[int, int] = {}
        self._thread = threading.Thread(target=self._serve, name="fake-vhost-user", daemon=True)
        self._thread.start()

    @classmethod
    def pair(cls, **options) -> tuple[socket.socket, "FakeVhostUserBackend"]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        return ours, cls(theirs, **options)

    def requests(self, at_least: int = 0, timeout: float = 2.0) -> list[Request]:
        """The requests received so far, waiting (a little) until there are `at_least`: a
        request without a reply may still be in flight when the frontend returns."""
        deadline = time.monotonic() + timeout
        while len(self.received) < at_least and time.monotonic() < deadline:
            time.sleep(0.005)
        return [r for r, *_ in self.received]

    def fds_of(self, request: Request) -> list[int]:
        return [fd for r, _, _, fds in self.received if r == request for fd in fds]

    def stop(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._thread.join(5)
        self.sock.close()
        for *_, fds in self.received:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass

    # -- the backend's loop ----------------------------------------------------------------------
    def _serve(self) -> None:
        while self.close_after is None or len(self.received) < self.close_after:
            message = self._read_message()
            if message is None:
                return
            self.received.append(message)
            self._answer(*message)
        self.sock.shutdown(socket.SHUT_RDWR)

    def _read_message(self):
        try:
            head, fds = self._recv(HEADER.size)
            if len(head) < HEADER.size:
                return None
            request, flags, size = HEADER.unpack(head)
            payload, more = self._recv(size) if size else (b"", [])
        except OSError:
            return None
        try:
            request = Request(request)
        except ValueError:
            pass
        return request, flags, payload, fds + more

    def _recv(self, size: int) -> tuple[bytes, list[int]]:
        data, fds = b"", []
        while len(data) < size:
            chunk, ancdata, _, _ = self.sock.recvmsg(size - len(data), socket.CMSG_SPACE(8 * 4))
            for _, _, raw in ancdata:
                got = array.array("i")
                got.frombytes(raw[:len(raw) - len(raw) % got.itemsize])
                fds.extend(got)
            if not chunk:
                break
            data += chunk
        return data, fds

    def _answer(self, request, flags: int, payload: bytes, fds) -> None:
        override = self.reply_override(request)
        if override is not None:
            self.sock.sendall(override)
            return
        if request == Request.GET_FEATURES:
            self._reply(request, U64.pack(self.features))
        elif request == Request.GET_PROTOCOL_FEATURES:
            self._reply(request, U64.pack(self.protocol_features))
        elif request == Request.GET_VRING_BASE:
            index = VRING_STATE.unpack(payload)[0]
            self._reply(request, VRING_STATE.pack(index, self.vring_base.get(index, 0)))
        elif flags & FLAG_NEED_REPLY:
            self._reply(request, U64.pack(1 if request in self.nack else 0))

    def _reply(self, request, payload: bytes) -> None:
        self.sock.sendall(HEADER.pack(request, VERSION | FLAG_REPLY, len(payload)) + payload)
