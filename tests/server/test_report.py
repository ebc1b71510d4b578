"""`spikewatch report`: a run written through the real Store (wire messages) drawn to PNG+HTML."""

from __future__ import annotations

import base64
import itertools
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

from spikewatch.protocol import wire
from spikewatch.server.api import Tokens, create_app
from spikewatch.server.backtest import spike_onsets
from spikewatch.server.report import ReportError, RunData, from_store, load, write_report
from spikewatch.server.report._charts import panel_svg
from spikewatch.server.report._data import SERIES
from spikewatch.server.report._html import CHART_IDS
from spikewatch.server.report._layout import coarse_bands, layout, spans_decades, thin
from spikewatch.server.report._png import SIZE_PX
from spikewatch.server.store import Store
from spikewatch.server.types import AlertState, Severity, Transition
from tests._net import live_app

ROOT = Path(__file__).resolve().parents[2]
RUN = "spiky-fnn"
STEPS = 600
ONSET = 400
TOKEN = "report-read-token-0123456789"
META: dict[str, wire.Scalar] = {"model": "fnn-1000", "optimizer": "Adam", "lr": 0.01,
                                "beta2": 0.999, "params": 3001}


def _curves(s: int) -> dict[str, float]:
    """A run that decays, crosses the edge of stability, spikes at ONSET and recovers."""
    base = 2.0 * math.exp(-s / 70) + 0.01
    loss = base + (1.2 * math.exp(-(s - ONSET) / 9) if s >= ONSET else 0.0)
    ramp = min(max((s - 300) / 98, 0.0), 1.0)
    ratio = 0.35 + 1.25 * ramp if s < 410 else 0.3 + 0.1 * math.sin(s / 7)
    rho = 0.9 * math.exp(-s / 90) if s < ONSET else 0.3 + 1.5 * math.exp(-(s - ONSET) / 12)
    div = 0.9 - 0.8 * min(max((s - 250) / 150, 0.0), 1.0) if s < 415 else 0.7
    phase = 1 if s < 200 else 2 if s < 388 else 3 if s < 400 else 4 if s < 415 else (
        5 if s < 430 else 1)
    out = {"loss": loss, "stability_ratio": ratio, "rho": rho,
           "stability_ratio_two_secant": 0.99 * ratio, "rho_sampled": 1.05 * rho,
           "sqrt_v_decay": 1.0 if 200 <= s < ONSET else (1.04 if s < 415 else 1.0003),
           "sa_sign_diversity": div, "grad_spike_share": 0.15 + 0.6 * ramp * (s < 415),
           "phase": float(phase),
           "stability_ratio_secant": 0.3 + 1.3 * min(max((s - 330) / 70, 0.0), 1.0)
           if s < 412 else 0.35}  # fmt: skip
    if s % 10 == 0:
        out["stability_ratio_max"] = 1.25 * ratio
    if s == ONSET + 5:
        out["loss"] = math.nan
    if s == ONSET + 6:
        out["loss"] = math.inf
    return out


def fill_spiking_run(store: Store, run: str = RUN) -> None:
    """Hello + batches (≤ 256 records each) + the alert transitions the rules would have made."""
    now = time.time() - STEPS
    session = "5" * 32
    store.write(wire.Hello(wire.Header(session, 1, run, sent_at=now), META))
    for seq, lo in enumerate(range(0, STEPS, 256), start=2):
        store.write(wire.Batch(wire.Header(session, seq, run, sent_at=now), tuple(
            wire.Record(step=s, time=now + s, scalars=_curves(s))
            for s in range(lo, min(lo + 256, STEPS)))))
    T, A = Transition, AlertState
    store.save_transitions([
        T("stability_edge_crossing", run, Severity.WARNING, A.PENDING, 150, now + 150, 1.01),
        T("stability_edge_crossing", run, Severity.WARNING, A.INACTIVE, 152, now + 152, 0.9),
        T("preconditioner_decay", run, Severity.INFO, A.PENDING, 220, now + 220, 0.09),
        T("preconditioner_decay", run, Severity.INFO, A.FIRING, 240, now + 240, 0.08),
        T("stability_edge_crossing", run, Severity.WARNING, A.PENDING, 375, now + 375, 1.0),
        T("stability_edge_crossing", run, Severity.WARNING, A.FIRING, 378, now + 378, 1.1),
        T("predicted_loss_spike", run, Severity.PAGE, A.PENDING, 380, now + 380, 1.2),
        T("predicted_loss_spike", run, Severity.PAGE, A.FIRING, 388, now + 388, 1.4,
          annotations={"summary": "loss spike predicted"}),
        T("preconditioner_decay", run, Severity.INFO, A.RESOLVED, 400, now + 400, 2.0),
        T("nonfinite_loss", run, Severity.PAGE, A.FIRING, 405, now + 405, math.nan),
        T("stability_edge_crossing", run, Severity.WARNING, A.RESOLVED, 412, now + 412, 0.5),
        T("predicted_loss_spike", run, Severity.PAGE, A.RESOLVED, 418, now + 418, 0.4),
    ])  # fmt: skip


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('report') / 'report.db'}"
    store = Store(url)
    store.upgrade()
    fill_spiking_run(store)
    store.write(wire.Batch(wire.Header("6" * 32, 1, "loss-only"), tuple(
        wire.Record(step=s, time=time.time(), scalars={"loss": 1.0 / (s + 1)})
        for s in range(50))))
    store.close()
    return url


@pytest.fixture(scope="module")
def run_data(db: str) -> RunData:
    return load(RUN, db=db)


@pytest.fixture(scope="module")
def written(run_data: RunData, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_report(run_data, tmp_path_factory.mktemp("out"))


@dataclass
class _Group:
    """A classed <g> of a chart: its data-* attributes and the text inside it (tooltips, labels)."""

    chart: str
    cls: str
    attrs: dict[str, str]
    texts: list[str] = field(default_factory=list)
    svg_paths: list[str] = field(default_factory=list)


class _Page(HTMLParser):
    """Collects the svg charts (id → attributes), their classed groups, alert rows, ids."""

    def __init__(self) -> None:
        super().__init__()
        self.svgs: dict[str, dict[str, str]] = {}
        self.groups: list[_Group] = []
        self.alert_rows: list[dict[str, str]] = []
        self.ids: dict[str, dict[str, str]] = {}
        self._chart = ""
        self._open: list[_Group | None] = []  # per open element inside an svg

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            assert a["id"] not in self.ids, f"duplicate id {a['id']}"
            self.ids[a["id"]] = a
        if tag == "svg":
            self.svgs[a["id"]] = a
            self._chart = a["id"]
        elif tag == "tr" and a.get("class") == "alert-row":
            self.alert_rows.append(a)
        if not self._chart:
            return
        group = None
        if tag == "g" and "class" in a:
            group = _Group(self._chart, a["class"], a)
            self.groups.append(group)
        elif tag == "path" and (open_group := self.open_group()) is not None:
            open_group.svg_paths.append(a.get("d", ""))
        self._open.append(group)

    def handle_endtag(self, tag: str) -> None:
        if self._chart:
            self._open.pop()
            if tag == "svg":
                self._chart = ""

    def open_group(self) -> _Group | None:
        return next((g for g in reversed(self._open) if g is not None), None)

    def handle_data(self, data: str) -> None:
        if (g := self.open_group()) is not None and data.strip():
            g.texts.append(data)

    def find(self, chart: str, cls: str) -> list[_Group]:
        return [g for g in self.groups if g.chart == chart and g.cls == cls]


def _parse(html_path: Path) -> _Page:
    p = _Page()
    p.feed(html_path.read_text(encoding="utf-8"))
    return p


# --- data --------------------------------------------------------------------------------------


def test_store_run_has_every_series_alerts_and_nonfinite(run_data: RunData) -> None:
    assert set(run_data.series) == set(SERIES)
    assert run_data.missing == []
    loss = dict(run_data.series["loss"])
    assert len(loss) == STEPS
    assert math.isnan(loss[ONSET + 5])
    assert loss[ONSET + 6] == math.inf
    assert run_data.onsets == [ONSET] == spike_onsets(run_data.series["loss"])
    assert run_data.meta == META
    assert run_data.info["last_step"] == STEPS - 1
    by_rule = {a.rule: a for a in run_data.alerts if a.fired_step is not None}
    assert run_data.lead(by_rule["predicted_loss_spike"]) == ONSET - 388
    assert run_data.lead(by_rule["nonfinite_loss"]) is None  # fired after the onset
    assert by_rule["nonfinite_loss"].resolved_step is None
    assert math.isnan(by_rule["nonfinite_loss"].value)
    never = [a for a in run_data.alerts if a.fired_step is None]
    assert [(a.rule, a.state, a.first_step) for a in never] == [
        ("stability_edge_crossing", "inactive", 150)]
    assert run_data.lead(never[0]) is None


def test_unknown_run_and_missing_database_are_clear_errors(db: str, tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="no run named 'nope'"):
        load("nope", db=db)
    missing = tmp_path / "absent.db"
    with pytest.raises(ReportError, match="no database file"):
        load(RUN, db=f"sqlite:///{missing}")
    assert not missing.exists()  # nothing created by looking
    with pytest.raises(ReportError, match="not a valid run name"):
        load("../etc", db=db)


# --- files -------------------------------------------------------------------------------------


def test_png_decodes_with_expected_size(written: tuple[Path, Path]) -> None:
    import matplotlib.image

    png, _ = written
    assert png.name == f"{RUN}.png"
    img = matplotlib.image.imread(png)
    assert img.shape[:2] == (SIZE_PX[1], SIZE_PX[0])
    assert float(img[..., :3].std()) > 0.05  # not a blank canvas


def test_html_has_every_chart_with_points_and_the_alert_rows(
    written: tuple[Path, Path], run_data: RunData
) -> None:
    png, html = written
    page = _parse(html)
    assert list(page.svgs) == list(CHART_IDS)
    for cid in CHART_IDS:
        assert int(page.svgs[cid]["data-points"]) > 0, cid
    # every loss point is drawn (600 < one per pixel column × 4) plus non-finite markers
    assert int(page.svgs["chart-loss"]["data-points"]) >= STEPS - 2
    assert int(page.svgs["chart-alerts"]["data-points"]) == len(run_data.alerts) == 5
    rows = [(r["data-rule"], r["data-severity"]) for r in page.alert_rows]
    assert sorted(rows) == sorted((a.rule, a.severity) for a in run_data.alerts)
    text = html.read_text(encoding="utf-8")
    assert "12 steps (onset 400)" in text  # predicted_loss_spike's lead
    assert "<b>1/1</b><span>onsets paged ahead</span>" in text
    assert "<b>12</b><span>page lead (steps, per onset)</span>" in text
    leads = page.find("chart-alerts", "lead")
    assert sorted((g.attrs["data-rule"], g.attrs["data-lead"], g.texts[-1]) for g in leads) == [
        ("preconditioner_decay", "160", "lead 160"), ("predicted_loss_spike", "12", "lead 12"),
        ("stability_edge_crossing", "22", "lead 22")]  # drawn as text, readable in the DOM
    spans = page.find("chart-alerts", "alert-span")
    assert sorted((g.attrs["data-rule"], g.attrs["data-severity"]) for g in spans) == sorted(rows)
    assert "1 pending episode(s) that cleared without firing" in text
    for k, v in META.items():
        assert re.search(rf"<th>{k}</th><td>{re.escape(str(v))}</td>", text), k
    # the same PNG embedded as a data URL
    src = page.ids["report-png"]["src"]
    assert src.startswith("data:image/png;base64,")
    assert base64.b64decode(src.split(",", 1)[1]) == png.read_bytes()
    # self-contained: nothing fetched from elsewhere
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)


def test_nonfinite_loss_is_marked_not_dropped(written: tuple[Path, Path]) -> None:
    page = _parse(written[1])
    (marks,) = page.find("chart-loss", "nonfinite")
    assert marks.attrs["data-metric"] == "loss"
    assert marks.attrs["data-edge"] == "top"
    assert any("step 405: NaN" in t for t in marks.texts), marks.texts
    assert any("step 406: +Inf" in t for t in marks.texts), marks.texts
    assert marks.texts[0] == "loss: 2 NaN/+Inf/above"  # the row's tooltip, as in the legend


def test_points_counted_are_the_points_in_the_dom(written: tuple[Path, Path]) -> None:
    """data-points is what the chart drew: the vertices of its series paths plus its edge
    markers (one per pixel column), nothing else."""
    page = _parse(written[1])
    for cid in CHART_IDS[:-1]:
        series = page.find(cid, "series")
        assert series, cid
        vertices = 0
        for g in series:
            drawn = sum(len(re.findall(r"[ML]", d)) for d in g.svg_paths[:1])
            assert drawn == int(g.attrs["data-points"]), (cid, g.attrs["data-metric"])
            vertices += drawn
        markers = sum(len(g.texts) - 1 for g in page.find(cid, "nonfinite"))  # minus the title
        assert vertices + markers == int(page.svgs[cid]["data-points"]), cid


def test_missing_series_are_skipped_with_a_note(db: str, tmp_path: Path) -> None:
    run = load("loss-only", db=db)
    assert set(run.series) == {"loss"}
    assert "stability_ratio" in run.missing
    assert "phase" in run.missing
    png, html = write_report(run, tmp_path)
    import matplotlib.image

    assert matplotlib.image.imread(png).shape[:2] == (SIZE_PX[1], SIZE_PX[0])
    page = _parse(html)
    assert int(page.svgs["chart-loss"]["data-points"]) == 50
    assert page.svgs["chart-stability"]["data-points"] == "0"
    text = html.read_text(encoding="utf-8")
    assert ("not recorded in this run: stability_ratio_two_secant, stability_ratio, "
            "stability_ratio_secant") in text
    assert "No phase series in this run" in text
    assert "No alerts were raised for this run." in text


def test_thinning_keeps_the_spike_and_bounds_the_points() -> None:
    pts = [(s, 1.0 + (100.0 if s == 123_457 else 0.0) + (s % 7) * 1e-3) for s in range(200_000)]
    kept = thin(pts, lambda s: s / 200_000 * 1000)
    assert len(kept) <= 4 * 1001
    assert (123_457, 101.0 + (123_457 % 7) * 1e-3) in kept
    assert kept == sorted(kept)


def test_log_scale_only_when_the_series_spans_decades() -> None:
    assert spans_decades([(0, 2.0), (1, 0.01)])
    assert not spans_decades([(0, 2.0), (1, 0.5), (2, math.nan)])
    assert not spans_decades([])


def test_flickering_phases_cost_at_most_one_band_per_column() -> None:
    bands = [(0, 50_000, 2)] + [(s, s + 1, 1 + s % 5) for s in range(50_000, 100_000)]
    coarse = coarse_bands(bands, 0, 100_000, 1000)
    assert len(coarse) <= 1000
    assert coarse[0] == (0, 50_000, 2)  # the long stretch survives whole
    assert coarse[-1][1] == 100_000
    assert all(a[1] == b[0] for a, b in itertools.pairwise(coarse))  # no gaps


def test_off_scale_outlier_is_an_edge_marker_not_dropped() -> None:
    decay = [(s, 1.0 + 1e-4 * (s % 3)) for s in range(100)]
    decay[5] = (5, 6.0)  # e.g. the first update, far from the β2-decay regime
    run = RunData("r", {}, {}, {"rho": [(s, 0.5) for s in range(100)], "sqrt_v_decay": decay},
                  [], "test")
    lay = layout(run)
    rho_panel = next(p for p in lay.panels if p.id == "chart-rho")
    _lo, hi = rho_panel.limits(True)
    assert hi < 1.01  # the right axis follows the bulk, not the outlier
    page = _Page()
    page.feed(panel_svg(rho_panel, lay))
    (marks,) = page.find("chart-rho", "nonfinite")
    assert marks.attrs["data-metric"] == "sqrt_v_decay"
    assert any(t.endswith("step 5: 6") for t in marks.texts), marks.texts
    assert "sqrt_v_decay: 1 NaN/+Inf/above" in marks.texts


@pytest.mark.postgres
def test_report_from_postgres(pg_url: str, tmp_path: Path) -> None:
    store = Store(pg_url)
    store.upgrade()
    try:
        fill_spiking_run(store)
        run = from_store(store, RUN)
    finally:
        store.close()
    assert run.onsets == [ONSET]
    assert math.isnan(dict(run.series["loss"])[ONSET + 5])
    _, html = write_report(run, tmp_path)
    page = _parse(html)
    assert all(int(page.svgs[c]["data-points"]) > 0 for c in CHART_IDS)


# --- the real command --------------------------------------------------------------------------


def spikewatch(*args: str, extra_env: dict[str, str] | None = None,
               pre: str = "") -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run `spikewatch` (spikewatch.server.cli) in a subprocess; `pre`: Python run before it."""
    env = {k: v for k, v in os.environ.items() if k not in ("SPIKEWATCH_TOKEN", "SPIKEWATCH_DB")}
    env.update(PYTHONPATH=str(ROOT), **(extra_env or {}))
    code = (f"{pre}\nimport sys\nfrom spikewatch.server.cli import main\n"
            "sys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=90, env=env, cwd=ROOT, check=False)  # fmt: skip


@pytest.mark.slow
def test_cli_writes_both_files(db: str, tmp_path: Path) -> None:
    out = tmp_path / "reports"
    r = spikewatch("report", "--run", RUN, "--db", db, "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["wrote", str(out / f"{RUN}.png"), "wrote", str(out / f"{RUN}.html")]
    page = _parse(out / f"{RUN}.html")
    assert all(int(page.svgs[c]["data-points"]) > 0 for c in CHART_IDS)
    assert len(page.alert_rows) == 5


@pytest.mark.slow
def test_cli_bad_input_is_exit_2_and_writes_nothing(db: str, tmp_path: Path) -> None:
    r = spikewatch("report", "--run", "nope", "--db", db, "--out", str(tmp_path / "o"))
    assert r.returncode == 2
    assert "no run named 'nope'" in r.stderr
    assert not (tmp_path / "o").exists()
    r = spikewatch("report", "--run", RUN, "--url", "http://127.0.0.1:9", "--out",
                   str(tmp_path / "o"))  # fmt: skip
    assert r.returncode == 2
    assert "cannot reach http://127.0.0.1:9" in r.stderr
    r = spikewatch("report", "--run", RUN, "--db", db, "--out", str(tmp_path / "o"),
                   pre="import sys; sys.modules['matplotlib'] = None")  # as if not installed
    assert r.returncode == 2
    assert "pip install 'spikewatch[report]'" in r.stderr
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def server_url(db: str) -> Iterator[str]:
    """A real HTTP server (uvicorn) over the same database, with a read token required."""
    store = Store(db)
    app = create_app(store, tokens=Tokens.from_lines([f"{TOKEN} read"]))
    with live_app(app) as url:
        yield url
    store.close()


def test_api_source_reads_the_same_run(server_url: str, run_data: RunData) -> None:
    with pytest.raises(ReportError, match="token"):
        load(RUN, url=server_url)
    via_api = load(RUN, url=server_url, token=TOKEN)
    assert via_api.source == server_url
    assert via_api.meta == run_data.meta
    assert via_api.alerts == run_data.alerts
    assert via_api.onsets == run_data.onsets
    assert set(via_api.series) == set(run_data.series)
    for metric, pts in run_data.series.items():
        got = via_api.series[metric]
        assert [s for s, _ in got] == [s for s, _ in pts], metric
        assert all(a == b or (math.isnan(a) and math.isnan(b))
                   for (_, a), (_, b) in zip(got, pts, strict=True)), metric
    with pytest.raises(ReportError, match="no run named 'nope'"):
        load("nope", url=server_url, token=TOKEN)


@pytest.mark.slow
def test_cli_over_http(server_url: str, tmp_path: Path) -> None:
    r = spikewatch("report", "--run", RUN, "--url", server_url, "--out", str(tmp_path),
                   extra_env={"SPIKEWATCH_TOKEN": TOKEN})  # fmt: skip
    assert r.returncode == 0, r.stderr
    page = _parse(tmp_path / f"{RUN}.html")
    assert len(page.alert_rows) == 5
    assert all(int(page.svgs[c]["data-points"]) > 0 for c in CHART_IDS)
