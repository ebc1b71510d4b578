"""Notifiers against real targets: the prometheus-alertmanager binary and a local HTTP server."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from spikewatch.server.notify import AlertmanagerNotifier, Dispatcher, Retry, WebhookNotifier
from spikewatch.server.types import AlertState, Severity, Transition
from tests._net import free_port

AM_BIN = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
AM_CONFIG = """\
route:
  receiver: hook
  group_by: [alertname, run]
  group_wait: 200ms
  group_interval: 1s
receivers:
  - name: hook
"""
HOOK_RECEIVER = """\
    webhook_configs:
      - url: {url}
        send_resolved: true
"""


def wait_for(check: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Alertmanager:
    """A real Alertmanager on 127.0.0.1:port with its own config and storage; restartable."""

    def __init__(self, root: Path, receiver_url: str | None = None) -> None:
        assert AM_BIN is not None
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        hook = HOOK_RECEIVER.format(url=receiver_url) if receiver_url else ""
        (root / "am.yml").write_text(AM_CONFIG + hook)
        self.proc: subprocess.Popen[bytes] | None = None
        self._runs = 0

    def start(self) -> None:
        self._runs += 1
        storage = self.root / f"data{self._runs}"
        with (self.root / f"am{self._runs}.log").open("wb") as log:
            self.proc = subprocess.Popen(
                [AM_BIN or "", f"--config.file={self.root / 'am.yml'}",
                 f"--storage.path={storage}", f"--web.listen-address=127.0.0.1:{self.port}",
                 "--cluster.listen-address=", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"alertmanager exited: {self.log()}")
            try:
                return httpx.get(f"{self.url}/-/ready", timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 30.0, "alertmanager ready")

    def log(self) -> str:
        return (self.root / f"am{self._runs}.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def alerts(self, **params: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/api/v2/alerts", params=params, timeout=5.0)
        r.raise_for_status()
        out: list[dict[str, Any]] = r.json()
        return out


@pytest.fixture
def am(tmp_path: Path) -> Iterator[Alertmanager]:
    if AM_BIN is None:
        pytest.skip("prometheus-alertmanager binary not installed")
    server = Alertmanager(tmp_path)
    server.start()
    yield server
    server.stop()


def transition(state: AlertState, *, rule: str = "predicted_loss_spike", run: str = "job-1",
               step: int = 700, value: float = 1.02) -> Transition:  # fmt: skip
    return Transition(rule=rule, run=run, severity=Severity.PAGE, state=state, step=step,
                      time=1.7e9, value=value, labels={"signal": "stability_ratio"},
                      annotations={"summary": "spike predicted", "runbook": "lower the lr"})


def parse_time(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


@pytest.mark.alertmanager
def test_firing_alert_is_active_then_resolved_with_ends_at(tmp_path: Path, hook: Hook) -> None:
    if AM_BIN is None:
        pytest.skip("prometheus-alertmanager binary not installed")
    am = Alertmanager(tmp_path, receiver_url=hook.url)  # routes its notifications to `hook`
    am.start()
    n = AlertmanagerNotifier(am.url, generator_url="http://spikewatch:8000/")
    try:
        assert n.send(transition(AlertState.PENDING)) is False  # not Alertmanager's business
        assert am.alerts() == []
        assert n.send(transition(AlertState.FIRING)) is True
        [alert] = am.alerts()
        assert alert["labels"] == {"alertname": "predicted_loss_spike", "run": "job-1",
                                   "severity": "page", "signal": "stability_ratio"}  # fmt: skip
        assert alert["annotations"]["runbook"] == "lower the lr"
        assert alert["annotations"]["step"] == "700"
        assert alert["status"]["state"] == "active"
        assert alert["generatorURL"] == "http://spikewatch:8000/api/v1/runs/job-1/alerts"
        assert parse_time(alert["endsAt"]) > time.time()
        assert n.firing() == [("job-1", "predicted_loss_spike")]

        wait_for(lambda: any(b["status"] == "firing" for b in hook.bodies), what="notification")

        before = time.time()
        n.send(transition(AlertState.RESOLVED, step=740, value=0.95))
        assert n.firing() == []
        remaining = am.alerts()  # Alertmanager hides alerts whose endsAt has passed
        assert all(parse_time(a["endsAt"]) <= time.time() + 1 for a in remaining)
        assert [a for a in remaining if a["status"]["state"] == "active"
                and parse_time(a["endsAt"]) > before + 1] == []  # fmt: skip
        # Alertmanager itself notifies its receiver: firing first, then resolved with our endsAt
        wait_for(lambda: any(b["status"] == "resolved" for b in hook.bodies), what="resolved")
        firing = next(b for b in hook.bodies if b["status"] == "firing")
        resolved = next(b for b in hook.bodies if b["status"] == "resolved")
        assert firing["alerts"][0]["labels"]["run"] == "job-1"
        ends = parse_time(resolved["alerts"][0]["endsAt"])
        assert before - 1 <= ends <= time.time() + 1
        assert parse_time(resolved["alerts"][0]["startsAt"]) <= ends
    finally:
        n.close()
        am.stop()


@pytest.mark.alertmanager
def test_firing_alerts_are_resent_and_survive_an_alertmanager_restart(am: Alertmanager) -> None:
    n = AlertmanagerNotifier(am.url, resend_interval=0.3)
    d = Dispatcher([n], tick=0.05)
    try:
        d.submit(transition(AlertState.FIRING))
        wait_for(lambda: len(am.alerts()) == 1, what="first push")
        first_end = parse_time(am.alerts()[0]["endsAt"])
        wait_for(lambda: parse_time(am.alerts()[0]["endsAt"]) > first_end + 0.2, what="re-send")
        # a fresh Alertmanager (empty storage, same port) learns the alert from the re-sends
        am.stop()
        am.start()
        wait_for(lambda: len(am.alerts()) == 1, what="re-send after restart")
        assert am.alerts()[0]["labels"]["run"] == "job-1"
        d.submit(transition(AlertState.RESOLVED))
        wait_for(lambda: am.alerts() == [] or all(parse_time(a["endsAt"]) <= time.time() + 1
                                                 for a in am.alerts()), what="resolve")  # fmt: skip
    finally:
        d.close(timeout=5)
    snap = d.snapshot()
    # firing, ≥ 1 re-send, a re-send after the restart, the resolve
    assert snap[("alertmanager", "sent")] >= 4
    assert snap[("alertmanager", "failed")] <= 2  # re-sends while it restarted may fail


@pytest.mark.alertmanager
def test_retries_until_alertmanager_comes_up_and_keeps_order(tmp_path: Path) -> None:
    if AM_BIN is None:
        pytest.skip("prometheus-alertmanager binary not installed")
    am = Alertmanager(tmp_path)  # not started yet: nothing listens on its port
    n = AlertmanagerNotifier(am.url, resend_interval=3600, timeout=1.0)
    d = Dispatcher([n], retry=Retry(attempts=100, backoff=0.05, max_backoff=0.2), tick=0.05)
    try:
        d.submit(transition(AlertState.FIRING, run="a"))
        d.submit(transition(AlertState.RESOLVED, run="a"))
        d.submit(transition(AlertState.FIRING, run="b"))
        wait_for(lambda: d.snapshot()[("alertmanager", "retried")] >= 2, what="retries")
        am.start()
        wait_for(lambda: d.snapshot()[("alertmanager", "sent")] == 3, what="delivery")
        active = [a["labels"]["run"] for a in am.alerts()
                  if parse_time(a["endsAt"]) > time.time() + 1]  # fmt: skip
        assert active == ["b"]  # a's resolve did not overtake its firing
    finally:
        d.close(timeout=5)
        am.stop()
    assert d.snapshot()[("alertmanager", "failed")] == 0


# --- webhook -----------------------------------------------------------------------------------


class Hook:
    """A real HTTP server in a thread that records JSON bodies; answers `fail_first` 500s first."""

    def __init__(self, fail_first: int = 0, delay: float = 0.0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.fail_left = fail_first
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(delay)
                if hook.fail_left > 0:
                    hook.fail_left -= 1
                    self.send_response(500)
                else:
                    hook.bodies.append(json.loads(body))
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.close()


def test_webhook_posts_the_transition_as_json(hook: Hook) -> None:
    n = WebhookNotifier(hook.url, states=set(AlertState))
    try:
        n.send(transition(AlertState.FIRING, value=float("nan")))
        n.send(transition(AlertState.RESOLVED, value=float("-inf")))
    finally:
        n.close()
    assert [b["state"] for b in hook.bodies] == ["firing", "resolved"]
    body = hook.bodies[0]
    assert body == {
        "version": 1, "rule": "predicted_loss_spike", "run": "job-1", "severity": "page",
        "state": "firing", "step": 700, "time": 1.7e9, "value": "NaN",
        "labels": {"signal": "stability_ratio"},
        "annotations": {"summary": "spike predicted", "runbook": "lower the lr"},
    }  # fmt: skip
    assert hook.bodies[1]["value"] == "-Infinity"


def test_webhook_default_states_skip_pending(hook: Hook) -> None:
    d = Dispatcher([WebhookNotifier(hook.url)], tick=0.05)
    for s in (AlertState.PENDING, AlertState.FIRING, AlertState.INACTIVE, AlertState.RESOLVED):
        d.submit(transition(s))
    d.close(timeout=5)
    assert [b["state"] for b in hook.bodies] == ["firing", "resolved"]
    assert d.snapshot()[("webhook", "sent")] == 2


def test_dispatcher_retries_a_failing_webhook_with_backoff() -> None:
    hook = Hook(fail_first=3)
    d = Dispatcher([WebhookNotifier(hook.url)], retry=Retry(backoff=0.01), tick=0.05)
    try:
        d.submit(transition(AlertState.FIRING))
        wait_for(lambda: len(hook.bodies) == 1, what="delivery after 3 failures")
    finally:
        d.close(timeout=5)
        hook.close()
    assert d.snapshot() == {("webhook", "sent"): 1, ("webhook", "retried"): 3,
                            ("webhook", "failed"): 0}  # fmt: skip


def test_dispatcher_gives_up_after_max_attempts_and_counts_failed() -> None:
    url = f"http://127.0.0.1:{free_port()}/nobody-home"
    d = Dispatcher([WebhookNotifier(url, timeout=1.0)], retry=Retry(attempts=3, backoff=0.01),
                   tick=0.05)
    try:
        d.submit(transition(AlertState.FIRING))
        wait_for(lambda: d.snapshot()[("webhook", "failed")] == 1, what="give up")
    finally:
        d.close(timeout=5)
    assert d.snapshot()[("webhook", "retried")] == 2


def test_submit_never_blocks_and_close_is_bounded() -> None:
    slow = Hook(delay=0.5)  # every request takes 0.5 s
    fast = Hook()
    d = Dispatcher([WebhookNotifier(slow.url, name="slow"), WebhookNotifier(fast.url, name="fast")],
                   queue_size=4, tick=0.05)  # fmt: skip
    try:
        for i in range(50):
            d.submit(transition(AlertState.FIRING, step=i))
        # the slow target's queue overflowed and dropped; the fast one was not held up by it
        wait_for(lambda: d.snapshot()[("fast", "sent")] + d.snapshot()[("fast", "failed")] == 50,
                 what="fast notifier")  # fmt: skip
        assert d.snapshot()[("slow", "failed")] >= 40
        started = time.monotonic()
        d.close(timeout=1.0)
        assert time.monotonic() - started < 3.0
    finally:
        slow.close()
        fast.close()
    d.submit(transition(AlertState.FIRING))  # after close: counted, not raised
    assert d.snapshot()[("fast", "failed")] >= 1


def test_duplicate_notifier_names_are_refused(hook: Hook) -> None:
    with pytest.raises(ValueError, match="unique"):
        Dispatcher([WebhookNotifier(hook.url), WebhookNotifier(hook.url)])
