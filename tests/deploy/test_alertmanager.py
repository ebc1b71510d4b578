"""deploy/alertmanager checked with the real amtool and a real Alertmanager.

Static: every file passes `amtool check-config`, routes go where the comments say, secrets are
read from files. Live: the shipped routing and inhibition, with receivers pointed at a webhook in
this test, deliver a page to the paging receivers and inhibit the same run's warning.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests._net import free_port, program
from tests.deploy.conftest import DEPLOY, start, stop, wait_ready

AM = DEPLOY / "alertmanager"
MAIN = AM / "alertmanager.yml"
FILES = [MAIN, *sorted((AM / "receivers").glob("*.yml"))]

pytestmark = pytest.mark.alertmanager


def _amtool(*args: str | Path) -> tuple[int, str]:
    r = subprocess.run([program("amtool"), *map(str, args)], capture_output=True, text=True,
                       timeout=60, check=False)
    return r.returncode, r.stdout + r.stderr


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_check_config_passes(path: Path) -> None:
    rc, out = _amtool("check-config", path)
    assert rc == 0, out
    assert "SUCCESS" in out


def test_check_config_rejects_an_undefined_receiver(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(MAIN.read_text(encoding="utf-8").replace("receiver: slack", "receiver: slak"),
                   encoding="utf-8")
    rc, out = _amtool("check-config", bad)
    assert rc != 0
    assert "slak" in out


@pytest.mark.parametrize(("labels", "receivers"), [
    (["severity=page", "run=gpt-a", "alertname=predicted_loss_spike"],
     "webhook,pagerduty,opsgenie"),
    (["severity=warning", "run=gpt-a", "alertname=stability_edge_crossing"], "webhook,slack"),
    (["severity=info", "run=gpt-a"], "webhook"),
    (["severity=page", "alertname=SpikewatchServerDown"], "webhook,pagerduty,opsgenie"),
])
def test_routes(labels: list[str], receivers: str) -> None:
    rc, out = _amtool("config", "routes", "test", f"--config.file={MAIN}",
                      f"--verify.receivers={receivers}", *labels)
    assert rc == 0, out


def test_route_verification_can_fail() -> None:
    rc, out = _amtool("config", "routes", "test", f"--config.file={MAIN}",
                      "--verify.receivers=slack", "severity=page", "run=gpt-a")
    assert rc != 0, out


@pytest.mark.parametrize("path", FILES[1:], ids=lambda p: p.name)
def test_each_receiver_example_routes_everything_to_its_receiver(path: Path) -> None:
    rc, out = _amtool("config", "routes", "test", f"--config.file={path}",
                      f"--verify.receivers={path.stem}", "severity=page", "run=gpt-a")
    assert rc == 0, out


def _walk(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield k, v
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_secrets_are_read_from_files(path: Path) -> None:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    keys = dict(_walk(doc))
    for inline in ("routing_key", "service_key", "api_key", "api_url", "credentials",
                   "slack_api_url", "opsgenie_api_key", "password"):
        assert inline not in keys, f"{path.name}: {inline} inline; use {inline}_file"
    for key, value in _walk(doc):
        if key == "url":
            assert ".invalid" in value, f"{path.name}: webhook url {value} is not a placeholder"


# --- live ------------------------------------------------------------------------------------


class _Sink:
    """A webhook receiver on 127.0.0.1 recording (path, labels, status) per delivered alert."""

    def __init__(self) -> None:
        self.got: list[tuple[str, dict[str, str], str]] = []
        self.lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with sink.lock:
                    sink.got += [(self.path, a["labels"], a["status"]) for a in body["alerts"]]
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def deliveries(self) -> list[tuple[str, dict[str, str], str]]:
        with self.lock:
            return list(self.got)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def _local_config(sink_url: str) -> dict[str, Any]:
    """The shipped routing and inhibition; receivers are webhooks to the sink; fast timers."""
    doc: dict[str, Any] = yaml.safe_load(MAIN.read_text(encoding="utf-8"))
    doc["receivers"] = [{"name": r["name"],
                         "webhook_configs": [{"url": f"{sink_url}/{r['name']}",
                                              "send_resolved": True}]}
                        for r in doc["receivers"]]
    for _, route in _walk({"r": doc["route"]}):
        if isinstance(route, dict) and "receiver" in route:
            route["group_wait"] = "1s"
            route["group_interval"] = "1s"
    return doc


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[tuple[str, _Sink]]:
    binary = program("prometheus-alertmanager", "alertmanager")
    sink = _Sink()
    config = tmp_path / "alertmanager.yml"
    config.write_text(yaml.safe_dump(_local_config(sink.url)), encoding="utf-8")
    rc, out = _amtool("check-config", config)
    assert rc == 0, out
    port, log = free_port(), tmp_path / "alertmanager.log"
    proc = start([binary, f"--config.file={config}", f"--storage.path={tmp_path / 'data'}",
                  f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
                  "--log.level=warn"], log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/-/ready", proc, log)
        yield url, sink
    finally:
        stop(proc)
        sink.close()


def _alert(name: str, run: str, severity: str) -> dict[str, Any]:
    # As spikewatch's Alertmanager notifier sends them: alertname is the rule's name.
    return {"labels": {"alertname": name, "run": run, "severity": severity, "signal": "rho"},
            "annotations": {"summary": f"{name} on {run}"},
            "startsAt": datetime.now(UTC).isoformat()}


def test_page_routing_and_inhibition_live(alertmanager: tuple[str, _Sink]) -> None:
    url, sink = alertmanager
    page = _alert("predicted_loss_spike", "gpt-a", "page")
    r = httpx.post(f"{url}/api/v2/alerts", json=[page], timeout=5)
    assert r.status_code == 200, r.text
    warnings = [_alert("stability_edge_crossing", "gpt-a", "warning"),
                _alert("stability_edge_crossing", "gpt-b", "warning")]
    r = httpx.post(f"{url}/api/v2/alerts", json=warnings, timeout=5)
    assert r.status_code == 200, r.text

    def seen() -> set[tuple[str, str, str]]:
        return {(path, lab["alertname"], lab["run"]) for path, lab, _ in sink.deliveries()}

    expected = {("/webhook", "predicted_loss_spike", "gpt-a"),
                ("/pagerduty", "predicted_loss_spike", "gpt-a"),
                ("/opsgenie", "predicted_loss_spike", "gpt-a"),
                ("/webhook", "stability_edge_crossing", "gpt-b"),
                ("/slack", "stability_edge_crossing", "gpt-b")}
    deadline = time.monotonic() + 30
    while not expected <= seen() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert expected <= seen(), seen()
    time.sleep(2.5)  # two more group intervals: an uninhibited gpt-a warning would be here now
    assert seen() == expected, seen() - expected

    state = httpx.get(f"{url}/api/v2/alerts", timeout=5).json()
    inhibited = {(a["labels"]["alertname"], a["labels"]["run"]) for a in state
                 if a["status"]["inhibitedBy"]}
    assert inhibited == {("stability_edge_crossing", "gpt-a")}


def _templates(path: Path) -> list[str]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [v for _, v in _walk(doc.get("receivers", [])) if isinstance(v, str) and "{{" in v]


@pytest.mark.parametrize("path", [p for p in FILES if p.name != "webhook.yml"],  # no templates
                         ids=lambda p: p.name)
def test_notification_templates_render(path: Path, tmp_path: Path) -> None:
    """Every Go template in a receiver renders with amtool's example data (no missing function or
    template; those only fail at notification time otherwise)."""
    empty = tmp_path / "none.tmpl"
    empty.write_text('{{ define "spikewatch.none" }}{{ end }}', encoding="utf-8")
    texts = _templates(path)
    assert texts
    for text in texts:
        rc, out = _amtool("template", "render", f"--template.glob={empty}",
                          f"--template.text={text}")
        assert rc == 0, f"{text!r}: {out}"


def test_template_rendering_can_fail(tmp_path: Path) -> None:
    empty = tmp_path / "none.tmpl"
    empty.write_text('{{ define "spikewatch.none" }}{{ end }}', encoding="utf-8")
    rc, out = _amtool("template", "render", f"--template.glob={empty}",
                      '--template.text={{ template "pagerduty.default.description" . }}')
    assert rc != 0
    assert "not defined" in out
