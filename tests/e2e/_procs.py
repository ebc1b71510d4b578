"""Real programs for the end-to-end tests: the spikewatch daemon, Prometheus, Alertmanager and a
webhook receiver, each on a free 127.0.0.1 port with its own temporary directory.

Every wait is bounded; `Procs.stop_all()` (called by the fixtures' finalizers) terminates, then
kills, whatever was started.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import httpx
import yaml

from tests._net import free_port, program

ROOT = Path(__file__).resolve().parents[2]






def _tail(log: Path, n: int = 4000) -> str:
    return log.read_text(errors="replace")[-n:] if log.exists() else "(no log)"


@dataclass
class Procs:
    """Programs started by one fixture; `stop_all` ends them (SIGTERM, then SIGKILL)."""

    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, cmd: Sequence[str], log: Path, *, cwd: Path | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=cwd, env=env)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.started):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self.started.clear()


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    """Poll `url` until it answers 200; fail with the program's log if it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}:\n{_tail(log)}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout:.0f} s:\n{_tail(log)}")


@dataclass
class Daemon:
    """`python -m spikewatch.server.cli serve` as a subprocess."""

    zmq: str
    http: str
    log: Path
    proc: subprocess.Popen[bytes]

    @property
    def metrics_target(self) -> str:
        return self.http.removeprefix("http://")


def start_daemon(procs: Procs, workdir: Path, db: str,
                 config: dict[str, Any] | None = None) -> Daemon:
    """Start the daemon on free ports with `db` and an optional config file; wait for /readyz."""
    workdir.mkdir(parents=True, exist_ok=True)
    zmq, port = f"tcp://127.0.0.1:{free_port()}", free_port()
    cmd = [sys.executable, "-m", "spikewatch.server.cli", "serve", "--db", db, "--zmq", zmq,
           "--http-port", str(port)]
    if config:
        path = workdir / "spikewatch.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        cmd += ["--config", str(path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env = {k: v for k, v in env.items() if not k.startswith("SPIKEWATCH_")}
    log = workdir / "server.log"
    proc = procs.start(cmd, log, cwd=workdir, env=env)
    http = f"http://127.0.0.1:{port}"
    wait_http(f"{http}/readyz", proc, log, timeout=90)
    return Daemon(zmq, http, log, proc)


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
