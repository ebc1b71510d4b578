"""CURVE on the collector's ROUTER socket: encryption, the client allow-list, refusals counted.

A CURVE agent whose key is not on the allow-list is refused by the ZAP authenticator (counted in
`_Allow.callback`); a plaintext (or otherwise non-CURVE) agent never reaches that callback, so its
failed handshake is counted from a socket monitor instead. Nothing here logs a client key.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from spikewatch.server._stats import Stats

log = logging.getLogger("spikewatch.server.collector")


@dataclass(frozen=True, slots=True)
class CurveConfig:
    """CURVE encryption and client authentication for the ROUTER socket."""

    secret_key_file: Path  # zmq.auth certificate holding the server's public and secret key
    allowed_clients_file: Path | None = None  # Z85 public keys, one per line; None = any client

    def allowed(self) -> set[bytes]:
        if self.allowed_clients_file is None:
            return set()
        lines = self.allowed_clients_file.read_text().splitlines()
        return {ln.strip().encode() for ln in lines if ln.strip() and not ln.startswith("#")}


class _Allow:
    """zmq.auth credentials provider: an allow-list of client keys; refusals are counted."""

    def __init__(self, keys: set[bytes] | None, stats: Stats) -> None:
        self.keys, self.stats = keys, stats

    def callback(self, domain: str, key: bytes) -> bool:
        if self.keys is None or key in self.keys:
            return True
        self.stats.unauthenticated()
        log.warning("refused an agent whose CURVE key is not allowed")
        return False


class _NoKeys(logging.Filter):
    """Strip arguments (client keys, credentials) from what pyzmq's authenticator logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.msg, record.args = str(record.msg).split("%", 1)[0].rstrip(" :="), ()
        return True


def _zap_log() -> logging.Logger:
    """The authenticator's logger: warnings and errors only (its debug lines print client
    keys), and never with their arguments."""
    zap = logging.getLogger(f"{log.name}.zap")
    zap.setLevel(logging.WARNING)
    if not any(isinstance(f, _NoKeys) for f in zap.filters):
        zap.addFilter(_NoKeys())
    return zap


def start_authenticator(ctx: zmq.Context[zmq.Socket[bytes]], curve: CurveConfig,
                        stats: Stats) -> ThreadAuthenticator:
    """A running ZAP authenticator on `ctx` that admits the allowed keys (any key without an
    allow-list file)."""
    auth = ThreadAuthenticator(ctx, log=_zap_log())
    auth.start()
    keys = curve.allowed() if curve.allowed_clients_file else None
    auth.configure_curve_callback("*", credentials_provider=_Allow(keys, stats))
    return auth


def make_curve_server(router: zmq.Socket[bytes], curve: CurveConfig) -> None:
    """Make `router` a CURVE server with the key pair of `curve.secret_key_file`."""
    public, secret = zmq.auth.load_certificate(curve.secret_key_file)
    if secret is None:
        raise ValueError(f"{curve.secret_key_file} holds no secret key")
    router.curve_server = True
    router.curve_publickey, router.curve_secretkey = public, secret


def handshake_monitor(router: zmq.Socket[bytes]) -> zmq.Socket[bytes]:
    """A monitor socket that reports `router`'s failed (non-CURVE) handshakes."""
    return router.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                     | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


def count_refused_handshakes(monitor: zmq.Socket[bytes], stats: Stats) -> None:
    """Count every failed handshake waiting on `monitor` as an unauthenticated agent."""
    while True:
        try:
            parts = monitor.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        if len(parts) == 2:  # (event id + value, endpoint)
            stats.unauthenticated()
