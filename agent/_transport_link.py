"""The transport's DEALER socket to the server, configured once; it is its only owner.

ZeroMQ options: finite LINGER, SNDHWM/RCVHWM, non-blocking sends with IMMEDIATE (no queueing
toward an absent server: the transport spools instead), RECONNECT_IVL(_MAX), heartbeats (a hung
server is dropped in ~3 s), MAXMSGSIZE on replies, and CURVE when a server key is given (the
server authenticates the client key with ZAP; without client keys an ephemeral pair is used,
encrypted but not allowed by an allow-list).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import zmq

from spikewatch.protocol import wire

_ORPHANED: list[Any] = []  # a forked child keeps the parent's zmq objects alive, untouched


def _key(k: bytes | str | None) -> bytes | None:
    return k.encode("ascii") if isinstance(k, str) else k


class Link:
    """A connected DEALER socket and its context. After construction only the sender thread
    uses it (pyzmq sockets are not thread-safe)."""

    def __init__(self, endpoint: str, *, linger_ms: int, max_queue: int,
                 server_public_key: bytes | str | None = None,
                 client_secret_key: bytes | str | None = None,
                 client_public_key: bytes | str | None = None) -> None:
        """Connect (lazily, in the background).

        Raises ValueError for an incomplete set of CURVE keys (Z85, ``zmq.curve_keypair``) and
        zmq.ZMQError for a malformed endpoint.
        """
        if (client_secret_key is None) != (client_public_key is None):
            raise ValueError("give both client_secret_key and client_public_key, or neither")
        if client_secret_key is not None and server_public_key is None:
            raise ValueError("client CURVE keys need server_public_key")
        self.linger_ms = linger_ms
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context(io_threads=1)
        try:
            self.socket = self.context.socket(zmq.DEALER)
            self._configure(max_queue, _key(server_public_key), _key(client_secret_key),
                            _key(client_public_key))
            self.socket.connect(endpoint)
        except Exception:
            self.context.destroy(linger=0)
            raise

    def _configure(self, max_queue: int, server_key: bytes | None, secret: bytes | None,
                   public: bytes | None) -> None:
        s = self.socket
        s.setsockopt(zmq.LINGER, self.linger_ms)
        hwm = max(1000, 2 * max_queue)
        s.setsockopt(zmq.SNDHWM, hwm)
        s.setsockopt(zmq.RCVHWM, hwm)
        s.setsockopt(zmq.SNDTIMEO, 0)
        s.setsockopt(zmq.IMMEDIATE, 1)  # no queueing toward an absent peer: we spool instead
        s.setsockopt(zmq.RECONNECT_IVL, 100)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 5000)
        s.setsockopt(zmq.CONNECT_TIMEOUT, 5000)
        s.setsockopt(zmq.HEARTBEAT_IVL, 1000)  # a hung server drops the connection in ~3 s
        s.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
        s.setsockopt(zmq.HEARTBEAT_TTL, 3000)
        s.setsockopt(zmq.MAXMSGSIZE, wire.MAX_FRAME_BYTES)  # replies are small; refuse floods
        if server_key is not None:
            if secret is None or public is None:
                public, secret = zmq.curve_keypair()  # encrypted, but not on any allow-list
            s.setsockopt(zmq.CURVE_SERVERKEY, server_key)
            s.setsockopt(zmq.CURVE_PUBLICKEY, public)
            s.setsockopt(zmq.CURVE_SECRETKEY, secret)

    def wait_for_connect(self, seconds: float) -> None:
        """Give the first connection a moment (with IMMEDIATE nothing is sent before it)."""
        zmq.select([], [self.socket], [], seconds)

    def connected(self) -> bool:
        """Whether a server is connected: with IMMEDIATE a send could be queued."""
        return bool(int(self.socket.getsockopt(zmq.EVENTS)) & zmq.POLLOUT)

    def send(self, frame: bytes) -> bool:
        """Send without blocking; False when it cannot be queued (no server connected)."""
        try:
            self.socket.send(frame, zmq.NOBLOCK)
        except zmq.ZMQError:
            return False
        return True

    def replies(self) -> Iterator[bytes]:
        """The replies waiting now (the last part of each message), without blocking."""
        while True:
            try:
                parts = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError:
                return
            yield parts[-1]

    def close(self, linger_ms: int) -> None:
        """Close the socket, waiting at most `linger_ms` (and the link's own LINGER) to flush."""
        with contextlib.suppress(Exception):
            self.socket.close(linger=max(0, min(self.linger_ms, linger_ms)))
        with contextlib.suppress(Exception):
            self.context.term()

    def abandon(self) -> None:
        """In a forked child: never touch the parent's context or socket, keep them alive."""
        _ORPHANED.extend((self.context, self.socket))
