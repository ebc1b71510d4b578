"""The HTTP API fuzzed from its own OpenAPI schema with schemathesis: no 5xx on any endpoint.

The app is the real `create_app` over a real SQLite Store holding runs with NaN/Inf values
(scalars, layers, histograms, events, alerts, hello metadata), served by uvicorn on a free port;
schemathesis runs as a subprocess (`schemathesis run`), so its pytest plugin never touches this
test session. Examples per operation are bounded (`-n`), the subprocess by a timeout.
"""

from __future__ import annotations

import math
import secrets
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from spikewatch.protocol import wire
from spikewatch.protocol.names import Combine
from spikewatch.server._stats import Stats
from spikewatch.server.api import Tokens, create_app
from spikewatch.server.exporter import StoreExportSource, build_registry
from spikewatch.server.rules import DEFAULT_PACK, load_rules
from spikewatch.server.store import Store
from spikewatch.server.types import AlertState, Severity, Transition
from tests._net import free_port

EXAMPLES = 30


def _fill(store: Store) -> None:
    now = time.time()
    for run, world in (("alpha", 1), ("beta.v2:x-1", 2)):
        for rank in range(world):
            session = uuid.uuid4().hex
            h = wire.Header(session, 1, run, rank, world, now)
            store.write(wire.Hello(h, {"lr": math.inf, "odd": math.nan, "model": "fnn",
                                       "layers": 3, "resumed": None}))
            recs = tuple(wire.Record(
                step=s, time=now - 100 + s,
                scalars={"loss": [1.0, math.nan, math.inf, -math.inf][s % 4] + rank,
                         "stability_ratio": 0.1 * s},
                layers={"rho": {"fc1": math.inf if s == 3 else 0.5, "fc2.weight": -math.inf}},
                hists={"sa_hist": {"fc1": wire.Histogram(-1.0, 1.0, (s, 1, 2), s % 2)}},
                partials={"grad_norm": wire.Partial(Combine.SQRT_RATIO, math.inf if s == 2
                                                    else 4.0 * (rank + 1))},
                events=(wire.Event("nonfinite", {"what": "loss", "value": math.nan}),)
                if s == 1 else ())
                for s in range(8))
            store.write(wire.Batch(wire.Header(session, 2, run, rank, world, now), recs))
    store.save_transitions([
        Transition("predicted_loss_spike", "alpha", Severity.PAGE, AlertState.PENDING, 4,
                   now - 96, math.nan),
        Transition("predicted_loss_spike", "alpha", Severity.PAGE, AlertState.FIRING, 6,
                   now - 94, math.inf, annotations={"summary": "spike predicted"}),
        Transition("nonfinite_loss", "beta.v2:x-1", Severity.PAGE, AlertState.FIRING, 5,
                   now - 95, -math.inf),
    ])


@pytest.fixture
def api(sqlite_url: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(base URL, admin token) of the real app over a filled store, served by uvicorn."""
    store = Store(sqlite_url)
    store.upgrade()
    _fill(store)
    rule_file = tmp_path / "rules.yaml"
    shutil.copy(DEFAULT_PACK, rule_file)
    admin = secrets.token_urlsafe(24)
    tokens = Tokens.from_lines([f"{admin} admin", f"{secrets.token_urlsafe(24)} read"])
    app = create_app(store, registry=build_registry(StoreExportSource(store, Stats())),
                     rules=load_rules(rule_file), reload_rules=lambda: load_rules(rule_file),
                     tokens=tokens)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive(), "uvicorn died"
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", admin
    finally:
        server.should_exit = True
        thread.join(10)
        store.close()


def _schemathesis() -> Path:
    exe = Path(sys.executable).parent / "schemathesis"
    if not exe.exists():
        pytest.skip("schemathesis is not installed (extra 'dev')")
    return exe


def _run(base: str, admin: str, tmp_path: Path, name: str, run: str | None) -> str:
    """One `schemathesis run`; with `run`, the path parameter {run} is pinned to a stored run
    so the per-run endpoints are fuzzed past their 404 (query parameters stay random)."""
    config = tmp_path / f"{name}.toml"
    config.write_text(f'[parameters]\n"path.run" = "{run}"\n' if run else "")
    report = tmp_path / name
    cmd = [str(_schemathesis()), "--config-file", str(config), "run", f"{base}/openapi.json",
           "--checks", "not_a_server_error", "-n", str(EXAMPLES), "--seed", "7",
           "--request-timeout", "20", "--generation-database", "none",
           "--header", f"Authorization: Bearer {admin}",
           "--report", "junit", "--report-dir", str(report), "--no-color"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=130)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-8000:]
    junit = next(report.glob("*.xml")).read_text()
    assert "<skipped" not in junit, text[-4000:]
    return junit


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_no_5xx_on_any_endpoint(api: tuple[str, str], tmp_path: Path) -> None:
    base, admin = api
    spec = httpx.get(f"{base}/openapi.json", timeout=10).json()
    operations = sum(len(v) for v in spec["paths"].values())
    assert operations >= 10, spec["paths"].keys()
    junit = _run(base, admin, tmp_path, "random", None)
    assert junit.count("<testcase") == operations  # every operation was exercised
    for run in ("alpha", "beta.v2:x-1"):  # a NaN/Inf run and a two-rank run
        _run(base, admin, tmp_path, run.replace(":", "_"), run)
