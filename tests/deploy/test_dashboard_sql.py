"""The run dashboard's SQL, run as Grafana runs it against a real store filled by a real run.

A real PostgreSQL (tests/server/conftest.py), a real `spikewatch serve` on it (ServerProcess) and a
small classifier trained with `spikewatch.attach`, in which the learning rate changes (an
hparam_change event), one logged loss is inflated 10⁴× (a loss_spike event and alert) and one is
NaN (a nonfinite event, the nonfinite_loss page, a NULL value with its marker). The read-only role
is made by deploy/grafana/store-reader.sql through psql, as docs/deploy.md tells users to; every
query of deploy/grafana/dashboards/run-detail.json is substituted as Grafana does
(tests/deploy/grafana_sql.py) and run as that role. The step-axis series must equal what
GET /api/v1/runs/{run}/series returns. No Grafana binary is installed here, so Grafana itself
does not provision or render the dashboard.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import torch
from torch import nn

import spikewatch
from spikewatch.protocol import names as nm
from spikewatch.server.process import ServerProcess
from tests._net import program
from tests.deploy.conftest import DEPLOY, PostgresServer
from tests.deploy.grafana_sql import MACROS, concrete, placeholders, sql_queries

RUN = "grafana-sql"
STEPS, LR_CHANGE, SPIKE, NAN = 170, 100, 140, 150  # the loss-spike rule needs 128 steps first
READER, PASSWORD = "spikewatch_grafana", "reader-secret"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "run-detail.json"
# Each SQL query of the dashboard: the columns it returns (a new query must be listed here).
COLUMNS = {
    "panel Loss by step [A]": ["step", "loss", "eval loss", "loss spike (event)"],
    "panel Stability ratios by step [A]": ["step", "two-secant", "λ_grad", "λ_max", "secant"],
    "panel ρ (sampled) by step [A]": ["step", "ρ sampled", "ρ"],
    "panel Sign diversity by step [A]": ["step", "sign diversity"],
    "panel Agent overhead by step [A]": ["step", "overhead"],
    "panel Events, alerts and non-finite values by step [A]": ["step", "what", "rank", "detail"],
    "annotation Events (store)": ["time", "text", "tags"],
    "annotation Alerts (store)": ["time", "timeend", "text", "tags"],
    "variable $run": ["name"],
}
# The metric each step-axis column plots, and which must hold data in this run.
METRICS = {"loss": nm.LOSS, "two-secant": nm.STABILITY_RATIO_TWO_SECANT,
           "λ_grad": nm.STABILITY_RATIO, "λ_max": nm.STABILITY_RATIO_MAX,
           "secant": nm.STABILITY_RATIO_SECANT, "ρ sampled": nm.RHO_SAMPLED, "ρ": nm.RHO,
           "sign diversity": nm.SA_SIGN_DIVERSITY, "overhead": nm.AGENT_OVERHEAD}
MARKER_TEXT = {"NaN": "NaN", "Infinity": "+Inf", "-Infinity": "-Inf"}  # API name: table text
MUST_HAVE_DATA = ("loss", "two-secant", "ρ sampled", "sign diversity", "overhead")

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@dataclass(frozen=True)
class Store:
    """The filled store: the server's API, the reader's connection string, the run's time span."""

    api: str
    reader: str
    started: float
    ended: float


def _train(endpoint: str) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(128, 8)
    y = x[:, :3].argmax(dim=1)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 3))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)

    def closure() -> torch.Tensor:
        out: torch.Tensor = nn.functional.cross_entropy(model(x), y)
        return out

    monitor = spikewatch.attach(model, opt, run=RUN, endpoint=endpoint, closure=closure,
                                profile="full", overhead_budget=math.inf)
    try:
        for i in range(STEPS):
            if i == LR_CHANGE:
                opt.param_groups[0]["lr"] = 0.003
            opt.zero_grad(set_to_none=True)
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
            torch.autograd.backward(loss)
            opt.step()
            logged = loss.detach() * (1e4 if i == SPIKE else 1.0)
            monitor.log(math.nan if i == NAN else logged, logits=logits.detach(),
                        eval_loss=loss.detach())
    finally:
        monitor.close(timeout=10.0)


def _get(api: str, path: str, **params: Any) -> Any:
    r = httpx.get(f"{api}{path}", params=params, timeout=10.0)
    r.raise_for_status()
    return r.json()


def _wait(api: str) -> None:
    """Until the last step and the alerts of the injected spike and NaN are stored."""
    deadline = time.monotonic() + 60
    seen: Any = None
    while time.monotonic() < deadline:
        run = httpx.get(f"{api}/runs/{RUN}", timeout=5.0)
        if run.status_code == 200 and (run.json()["last_step"] or 0) >= STEPS - 1:
            seen = {a["rule"] for a in _get(api, f"/runs/{RUN}/alerts")}
            if {"loss_spike", "nonfinite_loss"} <= seen:
                return
        time.sleep(0.3)
    raise AssertionError(f"run {RUN} not stored with its alerts in time (alerts: {seen})")


@pytest.fixture(scope="module")
def store(pg_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    psql = program("psql")
    url = pg_server.new_database()
    db = url.rsplit("/", 1)[1]
    with ServerProcess(url, tmp_path_factory.mktemp("serve")) as server:
        started = time.time()
        _train(server.zmq)
        _wait(server.api_url)
        ended = time.time()
        # the read-only role, made as users make it (docs/deploy.md)
        subprocess.run([psql, "-X", "-q", "-h", "127.0.0.1", "-p", str(pg_server.port),
                        "-U", "postgres", "-d", db, "-v", f"reader_password={PASSWORD}",
                        "-f", str(DEPLOY / "grafana" / "store-reader.sql")],
                       check=True, capture_output=True, timeout=60)
        reader = (f"host=127.0.0.1 port={pg_server.port} dbname={db} user={READER} "
                  f"password={PASSWORD}")
        yield Store(server.api_url, reader, started, ended)


def _queries() -> dict[str, str]:
    return sql_queries(json.loads(DASHBOARD.read_text(encoding="utf-8")))


def _run(store: Store, sql: str, *, time_from: float | None = None,
         time_to: float | None = None) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Columns and rows of one dashboard query, as Grafana sends it, run as the read-only role."""
    import psycopg

    text = concrete(sql, {"run": RUN}, store.started - 60 if time_from is None else time_from,
                    store.ended + 60 if time_to is None else time_to)
    with psycopg.connect(store.reader, connect_timeout=10) as conn, conn.cursor() as cur:
        cur.execute(text.encode())  # bytes: psycopg runs it as is (no % placeholders)
        assert cur.description is not None
        return [c.name for c in cur.description], cur.fetchall()


def test_every_placeholder_of_the_dashboards_is_one_grafana_sql_substitutes() -> None:
    found = 0
    for path in sorted((DEPLOY / "grafana" / "dashboards").glob("*.json")):
        for where, sql in sql_queries(json.loads(path.read_text(encoding="utf-8"))).items():
            names, macros = placeholders(sql)
            assert names <= {"run"}, (path.name, where, names)
            assert macros <= MACROS, (path.name, where, macros)
            assert "$" not in concrete(sql, {"run": "r"}, 0, 1), (path.name, where)
            found += 1
    assert set(_queries()) == set(COLUMNS)
    assert found == len(COLUMNS)  # only the run dashboard reads the store


def test_substitution_is_grafanas() -> None:
    sql = ("SELECT 1 WHERE name = '$run' AND n = '${run}' AND $__unixEpochFilter(e.time)"
           " AND t <= $__unixEpochTo() AND t >= $__unixEpochFrom()")
    assert concrete(sql, {"run": "o'x"}, 10.7, 20.2) == (
        "SELECT 1 WHERE name = 'o''x' AND n = 'o''x' AND e.time >= 10 AND e.time <= 20"
        " AND t <= 20 AND t >= 10")
    assert placeholders(sql) == ({"run"}, set(MACROS))
    with pytest.raises(KeyError, match=r"\$__timeFilter"):
        concrete("SELECT 1 WHERE $__timeFilter(t)", {}, 0, 1)
    with pytest.raises(KeyError, match=r"\$other"):
        concrete("SELECT '$other'", {"run": "r"}, 0, 1)


def test_every_query_returns_its_columns_and_rows(store: Store) -> None:
    for where, sql in _queries().items():
        columns, rows = _run(store, sql)
        assert columns == COLUMNS[where], where
        assert rows, f"{where}: no rows"
    [names] = zip(*_run(store, _queries()["variable $run"])[1], strict=True)
    assert names == (RUN,)


def _trends() -> dict[str, str]:
    return {w: q for w, q in _queries().items() if COLUMNS[w][0] == "step"
            and w.startswith("panel") and "Events" not in w}


def test_step_axis_series_equal_the_api_series(store: Store) -> None:
    """Each plotted column holds the global series the API returns (rank 0 or combined); a
    non-finite value is a NULL there and a row of the event table."""
    events = _run(store, _queries()["panel Events, alerts and non-finite values by step [A]"])[1]
    nonfinite = {(what, step, detail) for step, what, _, detail in events
                 if what.startswith("non-finite")}
    with_data = set()
    for where, sql in _trends().items():
        columns, rows = _run(store, sql)
        steps = [r[0] for r in rows]
        assert steps == sorted(set(steps)), f"{where}: steps must ascend (the trend panel's x)"
        for i, label in enumerate(columns[1:], start=1):
            if label not in METRICS:
                continue
            metric = METRICS[label]
            plotted = {r[0]: r[i] for r in rows if r[i] is not None}
            points = (_get(store.api, f"/runs/{RUN}/series", metric=metric, limit=10000)["points"]
                      if plotted else [])
            api = {p["step"]: p["value"] for p in points if not isinstance(p["value"], str)}
            assert plotted == api, (where, label)
            for p in points:
                if isinstance(p["value"], str):
                    row = (f"non-finite {metric}", p["step"], MARKER_TEXT[p["value"]])
                    assert row in nonfinite, (where, label, p)
            if plotted:
                with_data.add(label)
    assert set(MUST_HAVE_DATA) <= with_data


def test_the_nan_loss_is_a_gap_and_a_table_row(store: Store) -> None:
    rows = _run(store, _queries()["panel Loss by step [A]"])[1]
    loss = {r[0]: r[1] for r in rows}
    assert loss[NAN] is None
    assert all(v is not None and math.isfinite(v) for s, v in loss.items() if s != NAN)
    events = _run(store, _queries()["panel Events, alerts and non-finite values by step [A]"])[1]
    assert (NAN, "non-finite loss", 0, "NaN") in events
    spikes = {r[0]: r[3] for r in rows if r[3] is not None}
    assert spikes == {SPIKE: loss[SPIKE]}  # the loss_spike event's point sits on the loss line
    clean = {r[0]: r[2] for r in rows}  # the eval_loss line: every step, the spike not on it
    assert all(v is not None and math.isfinite(v) for v in clean.values())
    assert clean[SPIKE] < loss[SPIKE] / 100


def test_events_and_alerts_are_annotations(store: Store) -> None:
    columns, rows = _run(store, _queries()["annotation Events (store)"])
    tags = {r[columns.index("tags")] for r in rows}
    assert {"spikewatch,loss_spike", "spikewatch,nonfinite", "spikewatch,hparam_change"} <= tags
    texts = [r[columns.index("text")] for r in rows]
    assert any(t.startswith(f"loss_spike at step {SPIKE} (rank 0): ") for t in texts), texts
    for r in rows:
        assert store.started - 1 <= r[0].timestamp() <= store.ended + 1
    columns, rows = _run(store, _queries()["annotation Alerts (store)"])
    rules = {r[columns.index("tags")].split(",")[3] for r in rows}
    assert {"loss_spike", "nonfinite_loss", "hyperparameter_change"} <= rules, rules
    for r in rows:
        assert r[columns.index("timeend")] >= r[columns.index("time")]
    # the dashboard's time range bounds them: an hour before the run holds none
    for name in ("annotation Events (store)", "annotation Alerts (store)"):
        assert _run(store, _queries()[name], time_from=store.started - 7200,
                    time_to=store.started - 3600)[1] == [], name


def test_the_reader_reads_only_and_only_the_dashboards_tables(store: Store) -> None:
    import psycopg

    for sql in ("INSERT INTO runs (name, created_at, last_seen) VALUES ('x', 0, 0)",
                "DELETE FROM scalars", "SELECT * FROM sessions", "CREATE TABLE t (x int)"):
        with (psycopg.connect(store.reader, connect_timeout=10) as conn,
              pytest.raises(psycopg.Error, match=r"permission denied|read-only")):
            conn.execute(sql.encode())
