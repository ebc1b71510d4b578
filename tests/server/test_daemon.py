"""`spikewatch serve` as a real subprocess: ingest, rules → alerts → webhook, SIGTERM shutdown."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import httpx
import pytest
import zmq

from spikewatch.protocol import wire
from spikewatch.server.process import ServerProcess
from spikewatch.server.store import Store
from tests._net import free_port

ROOT = Path(__file__).resolve().parents[2]


class Hook(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, object]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Hook.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[str]:
    Hook.received = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/hook"
    srv.shutdown()
    srv.server_close()


class Sender(threading.Thread):
    """An agent streaming one-record batches as fast as acks allow, recording what was acked."""

    def __init__(self, endpoint: str, run: str) -> None:
        super().__init__(daemon=True)
        self.endpoint, self.run_name = endpoint, run
        self.session = uuid.uuid4().hex
        self.acked: set[int] = set()
        self.sent = 0
        self.halt = threading.Event()

    def run(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)
        quiet_since = None
        try:
            while True:
                if not self.halt.is_set() and self.sent - len(self.acked) < 32:
                    self.sent += 1
                    h = wire.Header(self.session, self.sent, self.run_name, 0, 1, time.time())
                    rec = wire.Record(self.sent, time.time(), {"loss": float(self.sent)})
                    sock.send(wire.encode(wire.Batch(h, (rec,))))
                if sock.poll(20):
                    r = wire.decode_reply(sock.recv())
                    if isinstance(r, wire.Alert):  # the rising "loss" fires loss_spike: told
                        continue
                    assert isinstance(r, wire.Ack)
                    self.acked.update(r.seqs)
                    quiet_since = None
                elif self.halt.is_set():
                    quiet_since = quiet_since or time.monotonic()
                    if time.monotonic() - quiet_since > 1.5:
                        return
        finally:
            sock.close(0)
            ctx.term()


@pytest.mark.slow
def test_sigterm_keeps_everything_acknowledged(db_url: str, tmp_path: Path) -> None:
    with ServerProcess(db_url, tmp_path) as srv:
        senders = [Sender(srv.zmq, f"run{i}") for i in range(3)]
        for s in senders:
            s.start()
        deadline = time.monotonic() + 30
        while min(len(s.acked) for s in senders) < 50 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.stop() == 0, srv.tail()  # SIGTERM while the agents keep sending
    for s in senders:
        s.halt.set()
    for s in senders:
        s.join(10)
    store = Store(db_url)
    try:
        for s in senders:
            assert len(s.acked) >= 50
            stored = {p.step for p in store.series(s.run_name, "loss", limit=100000)}
            assert s.acked <= stored, f"acked but lost: {sorted(s.acked - stored)[:10]}"
    finally:
        store.close()
    assert "shutting down" in srv.log.read_text()


@pytest.mark.slow
def test_rules_alerts_and_webhook_wired(sqlite_url: str, tmp_path: Path, webhook: str) -> None:
    srv = ServerProcess(sqlite_url, tmp_path,
                        env={"SPIKEWATCH_WEBHOOK_URLS": json.dumps([webhook])})
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10000)
    try:
        srv.start()
        srv.wait_ready()
        sock.connect(srv.zmq)
        session = uuid.uuid4().hex
        # β1 down, unrescaled, and past the edge: a warning (the buffer's scale) and a page
        jump = wire.Event("momentum_jump", {"old": 0.97, "new": 0.9, "rescaled": False,
                                            "needs_rescale": True, "advised_factor": 0.3,
                                            "unstable_after": True})
        recs = (*(wire.Record(i, 1000.0 + i, {"loss": 1.0}) for i in range(1, 5)),
                wire.Record(5, 1005.0, {"loss": 1.0}, events=(jump,)))
        sock.send(wire.encode(wire.Batch(wire.Header(session, 1, "jumpy"), recs)))
        reply = wire.decode_reply(sock.recv())
        assert isinstance(reply, wire.Ack)
        assert reply.seqs == (1,)
        deadline = time.monotonic() + 20
        alerts: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            alerts = httpx.get(f"{srv.http}/api/v1/runs/jumpy/alerts", timeout=5).json()
            paged = any("unstable_after_hparam_change" in json.dumps(b) for b in Hook.received)
            if {a["rule"] for a in alerts} >= {"unrescaled_momentum_jump",
                                               "unstable_after_hparam_change"} and paged:
                break
            time.sleep(0.1)
        by = {a["rule"]: a for a in alerts}
        assert by["unrescaled_momentum_jump"]["severity"] == "warning"
        page = by["unstable_after_hparam_change"]
        assert (page["severity"], page["state"], page["fired_step"]) == ("page", "firing", 5)
        assert any("unstable_after_hparam_change" in json.dumps(b) for b in Hook.received)
        metrics = httpx.get(f"{srv.http}/metrics", timeout=5).text
        assert 'spikewatch_messages_received_total{type="batch"} 1.0' in metrics
        assert "spikewatch_run_loss{run=\"jumpy\"} 1.0" in metrics
        assert srv.stop() == 0, srv.tail()
    finally:
        sock.close(0)
        ctx.term()
        srv.stop()


def test_bad_config_file_is_a_clear_error(tmp_path: Path) -> None:
    cfg = tmp_path / "spikewatch.yaml"
    cfg.write_text("http_port: lots\n")
    out = subprocess.run([sys.executable, "-m", "spikewatch.server.cli", "serve",
                          "--config", str(cfg)],
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "http_port" in out.stderr
    assert str(cfg) in out.stderr


def test_daemon_runs_retention_periodically(sqlite_url: str) -> None:
    from spikewatch.server._settings import load_settings
    from spikewatch.server.daemon import Daemon

    store = Store(sqlite_url)
    store.upgrade()
    old = time.time() - 30 * 86400
    recs = tuple(wire.Record(i, old, layers={"rho": {"fc": 1.0}}) for i in range(100))
    store.write(wire.Batch(wire.Header(uuid.uuid4().hex, 1, "old"), recs))
    store.close()
    settings = load_settings(None, db=sqlite_url, zmq="tcp://127.0.0.1:*", http_port=free_port(),
                             retention={"interval_s": 0.2, "layers": {"keep_every": 10,
                                                                      "thin_after_days": 7}})
    daemon = Daemon(settings)
    daemon.start()
    try:
        assert daemon.store is not None
        s = daemon.store
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(s.series("old", "rho", layer="fc")) != 10:
            time.sleep(0.1)
        assert [p.step for p in s.series("old", "rho", layer="fc")] == list(range(0, 100, 10))
    finally:
        daemon.stop()


def test_settings_precedence_file_env_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    from spikewatch.server._settings import load_settings

    cfg = tmp_path / "sw.toml"
    cfg.write_text('db = "sqlite:///from-file.db"\nhttp_port = 9001\nzmq = "tcp://127.0.0.1:1"\n'
                   "[retention.layers]\nkeep_every = 5\n")
    monkeypatch.setenv("SPIKEWATCH_HTTP_PORT", "9002")
    monkeypatch.setenv("SPIKEWATCH_RETENTION__HISTOGRAMS__KEEP_EVERY", "7")
    monkeypatch.setenv("SPIKEWATCH_WEBHOOK_URLS", '["http://127.0.0.1:1/h"]')
    s = load_settings(cfg, zmq="tcp://127.0.0.1:2", http_port=None)
    assert s.db == "sqlite:///from-file.db"  # file
    assert s.http_port == 9002  # env over file
    assert s.zmq == "tcp://127.0.0.1:2"  # flag over file
    assert s.webhook_urls == ["http://127.0.0.1:1/h"]
    policy = s.retention.policy()
    assert (policy.layers.keep_every, policy.layers.thin_after_days) == (5, 7.0)  # default kept
    assert policy.histograms.keep_every == 7


@pytest.mark.parametrize(
    ("text", "needle"),
    [("http_port: lots\n", "'http_port' from config file"),
     ("retention: {layers: {keep_every: 0}}\n", "'retention.layers.keep_every'"),
     ("colour: blue\n", "'colour' from config file"),
     ("- a list\n", "must hold a mapping"),
     ("a: [\n", "not valid YAML")],
)
def test_bad_config_names_the_field(tmp_path: Path, text: str, needle: str) -> None:
    from spikewatch.server._settings import ConfigError, load_settings

    cfg = tmp_path / "sw.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("(", r"\(")):
        load_settings(cfg)


def test_bad_env_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from spikewatch.server._settings import ConfigError, load_settings

    monkeypatch.setenv("SPIKEWATCH_ACTIVE_WINDOW_S", "-1")
    with pytest.raises(ConfigError, match=r"'active_window_s' from environment"):
        load_settings(None)
    with pytest.raises(ConfigError, match=r"'http_port' from command line"):
        load_settings(None, http_port=70000)


def test_rules_reload_through_the_api(sqlite_url: str, tmp_path: Path) -> None:
    from spikewatch.server._settings import load_settings
    from spikewatch.server.daemon import Daemon

    rule = """rules:
  - name: {name}
    severity: warning
    condition: {{metric: loss, op: ">", value: 5.0}}
"""
    path = tmp_path / "rules.yaml"
    path.write_text(rule.format(name="loss_high"))
    port = free_port()
    daemon = Daemon(load_settings(None, db=sqlite_url, zmq="tcp://127.0.0.1:*", http_port=port,
                                  rules=str(path)))
    daemon.start()
    base = f"http://127.0.0.1:{port}/api/v1"
    try:
        assert [r["name"] for r in httpx.get(f"{base}/rules", timeout=5).json()] == ["loss_high"]
        path.write_text(rule.format(name="loss_very_high"))
        r = httpx.post(f"{base}/rules/reload", timeout=5)
        assert r.status_code == 200
        assert [x["name"] for x in r.json()] == ["loss_very_high"]
        path.write_text("rules:\n  - name: broken\n")  # all or nothing: the old rules stay
        r = httpx.post(f"{base}/rules/reload", timeout=5)
        assert r.status_code == 400
        assert "broken" in r.json()["detail"]
        assert [x["name"] for x in httpx.get(f"{base}/rules", timeout=5).json()] == [
            "loss_very_high"]
    finally:
        daemon.stop()
