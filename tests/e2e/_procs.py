"""Real programs for the end-to-end tests: the spikewatch daemon (`spikewatch.server.process`),
Prometheus, Alertmanager and a webhook receiver, each on a free 127.0.0.1 port with its own
temporary directory.

Every wait is bounded; `Procs.stop_all()` (called by the fixtures' finalizers) terminates, then
kills, whatever was started.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from spikewatch.server.process import ServerProcess as Daemon
from spikewatch.server.process import spawn, stop_process, wait_http
from tests._net import free_port, program

ROOT = Path(__file__).resolve().parents[2]

__all__ = ["ROOT", "Daemon", "Delivery", "Procs", "WebhookReceiver", "start_alertmanager",
           "start_daemon", "start_prometheus"]


@dataclass
class Procs:
    """Programs started by one fixture; `stop_all` ends them, the last started first (SIGTERM,
    then SIGKILL; each reaped)."""

    stops: list[Callable[[], object]] = field(default_factory=list)

    def start(self, cmd: Sequence[str], log: Path, *, cwd: Path | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        proc = spawn(cmd, log, cwd=cwd, env=env)
        self.stops.append(lambda: stop_process(proc, timeout=20))
        return proc

    def stop_all(self) -> None:
        while self.stops:
            self.stops.pop()()


def start_daemon(procs: Procs, workdir: Path, db: str,
                 config: dict[str, Any] | None = None) -> Daemon:
    """Start the daemon on free ports with `db` and an optional config file; wait for /readyz."""
    path = None
    if config:
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "spikewatch.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
    daemon = Daemon(db, workdir, config=path)
    procs.stops.append(lambda: daemon.stop(timeout=20))
    daemon.start()
    daemon.wait_ready(timeout=90)
    return daemon


def start_prometheus(procs: Procs, workdir: Path, targets: Sequence[str],
                     rule_files: Sequence[Path] = ()) -> str:
    """A real Prometheus scraping `targets` (job "spikewatch") every second; its URL."""
    binary = program("prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [{"job_name": "spikewatch",
                            "static_configs": [{"targets": list(targets)}]}],
    }
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    port, log = free_port(), workdir / "prometheus.log"
    proc = procs.start([binary, f"--config.file={path}", f"--storage.tsdb.path={workdir / 'data'}",
                        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"], log)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/-/ready", proc, log)
    return url


def start_alertmanager(procs: Procs, workdir: Path, webhook: str) -> str:
    """A real Alertmanager routing every alert to `webhook` at once; its URL.

    group_wait 0s sends a new group's first alert at once. group_interval is 100 ms, not 1 s: the
    toy run's page episodes last ~0.5 s, and an alert that fires and resolves between two flushes
    of an existing group is never notified (Alertmanager sends nothing when only resolved alerts
    are new and the last notification had none firing).
    """
    binary = program("prometheus-alertmanager", "alertmanager")
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "route": {"receiver": "test-webhook", "group_by": ["alertname", "run"],
                  "group_wait": "0s", "group_interval": "100ms", "repeat_interval": "1h"},
        "receivers": [{"name": "test-webhook",
                       "webhook_configs": [{"url": webhook, "send_resolved": True}]}],
    }
    path = workdir / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    port, log = free_port(), workdir / "alertmanager.log"
    proc = procs.start([binary, f"--config.file={path}", f"--storage.path={workdir / 'data'}",
                        f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
                        f"--log.level={os.environ.get('E2E_AM_LOG', 'warn')}"], log)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/-/ready", proc, log)
    return url


@dataclass(frozen=True)
class Delivery:
    """One webhook request from Alertmanager, with the time it arrived."""

    arrived: float  # time.time()
    body: dict[str, Any]


class _Hook(http.server.BaseHTTPRequestHandler):
    sink: ClassVar[list[Delivery]]
    lock: ClassVar[threading.Lock]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        arrived = time.time()
        with self.lock:
            self.sink.append(Delivery(arrived, json.loads(body)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class WebhookReceiver:
    """An http.server thread on 127.0.0.1 recording every POST with its arrival time."""

    def __init__(self) -> None:
        handler = type("Hook", (_Hook,), {"sink": [], "lock": threading.Lock()})
        self._handler: type[_Hook] = handler
        self._srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._srv.serve_forever, daemon=True,
                                        name="e2e-webhook")
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._srv.server_address[1]}/hook"

    def deliveries(self) -> list[Delivery]:
        with self._handler.lock:
            return list(self._handler.sink)

    def close(self) -> None:
        self._srv.shutdown()
        self._srv.server_close()
        self._thread.join(timeout=5)
