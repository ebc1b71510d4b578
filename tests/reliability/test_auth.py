"""Authentication on the real daemon: CURVE allow-list for agents, bearer tokens with read/admin
scopes for the HTTP API, and no key or token material in any log of a full session."""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
import zmq.auth

from spikewatch.agent._transport import Transport
from spikewatch.protocol import wire
from tests.reliability._daemon import Daemon


@dataclass(frozen=True)
class Keys:
    server_public: bytes
    server_secret: bytes
    client_public: bytes
    client_secret: bytes
    read_token: str
    admin_token: str

    def material(self) -> list[str]:
        return [self.server_secret.decode(), self.client_secret.decode(),
                self.client_public.decode(), self.read_token, self.admin_token]


@dataclass(frozen=True)
class Secured:
    daemon: Daemon
    keys: Keys


@contextlib.contextmanager
def _secured(tmp_path: Path) -> Iterator[Secured]:
    """The daemon with CURVE (one allowed agent key) and read/admin API tokens, logging DEBUG."""
    certs = tmp_path / "certs"
    certs.mkdir()
    _, server_secret_file = zmq.auth.create_certificates(certs, "server")
    _, client_secret_file = zmq.auth.create_certificates(certs, "agent")
    sp, ss = zmq.auth.load_certificate(server_secret_file)
    cp, cs = zmq.auth.load_certificate(client_secret_file)
    assert ss is not None
    assert cs is not None
    keys = Keys(sp, ss, cp, cs, secrets.token_urlsafe(24), secrets.token_urlsafe(24))
    allowed = tmp_path / "allowed_agents"
    allowed.write_text(f"# the one agent allowed\n{cp.decode()}\n")
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{keys.read_token} read\n{keys.admin_token} admin\n")
    config = tmp_path / "spikewatch.yaml"
    config.write_text(yaml.safe_dump({"log_level": "DEBUG", "auth": {
        "curve_secret_key_file": str(server_secret_file),
        "curve_allowed_clients_file": str(allowed), "api_tokens_file": str(tokens)}}))
    daemon = Daemon(f"sqlite:///{tmp_path / 'spikewatch.db'}", tmp_path, config=config)
    daemon.start()
    try:
        daemon.wait_ready()
        yield Secured(daemon, keys)
    finally:
        daemon.stop()


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Secured]:
    """A secured daemon for one test."""
    with _secured(tmp_path) as s:
        yield s


@pytest.fixture(scope="module")
def secured_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """A secured daemon shared by the HTTP token tests."""
    with _secured(tmp_path_factory.mktemp("api")) as s:
        yield s


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _metric(text: str, name: str) -> float:
    lines = [ln for ln in text.splitlines() if ln.startswith(name + " ")]
    assert lines, f"{name} not exported"
    return float(lines[0].split()[-1])


def test_curve_allow_list_acks_allowed_and_refuses_and_counts_others(
        secured: Secured, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    d, k = secured.daemon, secured.keys
    rec = wire.Record(1, time.time(), {"loss": 1.0})
    good = Transport(d.zmq, run="allowed", server_public_key=k.server_public,
                     client_public_key=k.client_public, client_secret_key=k.client_secret,
                     resend_after=0.5)
    unknown = Transport(d.zmq, run="unknown-key", server_public_key=k.server_public,
                        resend_after=0.5)  # a fresh key pair, not on the allow-list
    plain = Transport(d.zmq, run="plaintext", resend_after=0.5)
    try:
        for t in (good, unknown, plain):
            assert t.hello({"who": t.run})
            assert t.submit([rec])
        deadline = time.monotonic() + 30
        while good.counters().acked < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert good.counters().acked == 2
        time.sleep(2.0)  # the others had time to try (and retry)
        assert unknown.counters().acked == 0
        assert plain.counters().acked == 0
    finally:
        for t in (good, unknown, plain):
            t.close(timeout=1.0)
    r = httpx.get(f"{d.http}/api/v1/runs", headers=_bearer(k.read_token), timeout=10)
    assert r.status_code == 200
    assert [run["name"] for run in r.json()] == ["allowed"]
    metrics = httpx.get(f"{d.http}/metrics", headers=_bearer(k.read_token), timeout=10)
    assert metrics.status_code == 200
    # at least one refused handshake from the unknown key and one from the plaintext agent
    assert _metric(metrics.text, "spikewatch_messages_unauthenticated_total") >= 2
    assert _metric(metrics.text, 'spikewatch_messages_received_total{type="hello"}') == 1
    assert secured.daemon.stop() == 0
    logs = d.tail(10**7) + caplog.text
    assert "refused an agent" in logs  # the log is there ...
    for secret in k.material():
        assert secret not in logs  # ... but never a key or a token


@pytest.mark.parametrize(("path", "method"), [
    ("/api/v1/runs", "GET"), ("/api/v1/alerts", "GET"), ("/api/v1/rules", "GET"),
    ("/api/v1/runs/x/series?metric=loss", "GET"), ("/metrics", "GET"),
    ("/api/v1/rules/reload", "POST")])
def test_bearer_tokens_401_without_a_valid_token(secured_api: Secured, path: str,
                                                 method: str) -> None:
    d, k = secured_api.daemon, secured_api.keys
    url = f"{d.http}{path}"
    for headers in ({}, _bearer("x" * 32), _bearer(k.read_token + "x"),
                    _bearer(k.admin_token[:-1]), {"Authorization": k.admin_token},
                    {"Authorization": f"Basic {k.admin_token}"}):
        r = httpx.request(method, url, headers=headers, timeout=10)
        assert r.status_code == 401, (headers, r.status_code, r.text)
        assert "Bearer" in r.headers.get("www-authenticate", "")
        for secret in (k.read_token, k.admin_token):
            assert secret not in r.text


def test_bearer_token_scopes_read_and_admin(secured_api: Secured) -> None:
    d, k = secured_api.daemon, secured_api.keys
    for token in (k.read_token, k.admin_token):
        assert httpx.get(f"{d.http}/api/v1/runs", headers=_bearer(token),
                         timeout=10).status_code == 200
        assert httpx.get(f"{d.http}/api/v1/rules", headers=_bearer(token),
                         timeout=10).status_code == 200
    reload = f"{d.http}/api/v1/rules/reload"
    r = httpx.post(reload, headers=_bearer(k.read_token), timeout=10)
    assert r.status_code == 403
    r = httpx.post(reload, headers=_bearer(k.admin_token), timeout=10)
    assert r.status_code not in (401, 403)
    # probes stay open for orchestrators
    assert httpx.get(f"{d.http}/healthz", timeout=10).status_code == 200
    assert httpx.get(f"{d.http}/readyz", timeout=10).status_code == 200
