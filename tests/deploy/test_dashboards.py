"""The Grafana dashboards and provisioning, validated structurally (no Grafana binary needed)."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from spikewatch.protocol.names import EXPORTED
from tests.deploy.conftest import DEPLOY
from tests.deploy.promql import all_expressions, variables

GRAFANA = DEPLOY / "grafana"
FILES = sorted((GRAFANA / "dashboards").glob("*.json"))
BUILTIN = {"__rate_interval", "__interval", "__range", "__interval_ms", "__range_s",
           "__data", "__field", "__url_time_range", "__series", "__value", "__dashboard",
           "__unixEpochFilter", "__unixEpochFrom", "__unixEpochTo"}  # the last: SQL macros
PANEL_KINDS = {"row", "timeseries", "stat", "table", "state-timeline", "gauge", "bargauge",
               "text", "heatmap", "trend"}
# Prometheus names the server exports (the fixed contract); dashboards and rules use only these.
SERVER_METRICS = {f"spikewatch_run_{m}" for m in EXPORTED} | {
    "spikewatch_run_last_step", "spikewatch_run_last_seen_timestamp_seconds",
    "spikewatch_run_alert_state", "spikewatch_active_runs", "spikewatch_messages_received_total",
    "spikewatch_messages_invalid_total", "spikewatch_messages_deduplicated_total",
    "spikewatch_points_written_total", "spikewatch_write_latency_seconds_bucket",
    "spikewatch_ingest_queue_depth", "spikewatch_alerts_firing", "spikewatch_notifications_total",
    "spikewatch_refused_series_total", "spikewatch_build_info"}


def _provisioned_uid(file: str = "prometheus.yml", kind: str = "prometheus") -> str:
    doc = yaml.safe_load((GRAFANA / "provisioning/datasources" / file).read_text())
    [ds] = doc["datasources"]
    assert ds["type"] == kind
    uid: str = ds["uid"]
    return uid


def _store_uid() -> str:
    """The uid of the provisioned PostgreSQL datasource (the SQL store), which SQL panels name."""
    return _provisioned_uid("postgres.yml", "grafana-postgresql-datasource")


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)
    elif isinstance(node, str):
        yield node


def problems(doc: dict[str, Any], ds_uid: str) -> list[str]:
    """Everything structurally wrong with one dashboard document (empty when it is valid)."""
    out: list[str] = []
    for key in ("uid", "title", "schemaVersion", "panels", "templating", "time", "tags"):
        if key not in doc:
            out.append(f"missing key {key}")
    if doc.get("schemaVersion", 0) < 36:
        out.append(f"schemaVersion {doc.get('schemaVersion')} < 36")
    var_list = doc.get("templating", {}).get("list", [])
    defined = {v["name"] for v in var_list}
    ds_vars = {v["name"] for v in var_list if v.get("type") == "datasource"}
    for v in var_list:
        if v.get("type") == "datasource" and (v.get("query") != "prometheus"
                                              or v.get("current", {}).get("value") != ds_uid):
            out.append(f"datasource variable ${v['name']} does not default to uid {ds_uid}")
    panels = list(_panels(doc.get("panels", [])))
    ids = [p.get("id") for p in panels]
    if len(ids) != len(set(ids)) or None in ids:
        out.append(f"panel ids not unique: {ids}")
    boxes: list[tuple[int, int, int, int, str]] = []
    for p in panels:
        name = f"panel {p.get('id')} {p.get('title')!r}"
        if p.get("type") not in PANEL_KINDS:
            out.append(f"{name}: unknown type {p.get('type')}")
        g = p.get("gridPos", {})
        if not all(isinstance(g.get(k), int) for k in "xywh"):
            out.append(f"{name}: gridPos incomplete {g}")
            continue
        if g["x"] < 0 or g["y"] < 0 or g["w"] <= 0 or g["h"] <= 0 or g["x"] + g["w"] > 24:
            out.append(f"{name}: gridPos outside the 24-column grid {g}")
        for x, y, w, h, other in boxes:
            if g["x"] < x + w and x < g["x"] + g["w"] and g["y"] < y + h and y < g["y"] + g["h"]:
                out.append(f"{name} overlaps {other}")
        boxes.append((g["x"], g["y"], g["w"], g["h"], name))
        if p.get("type") == "row":
            continue
        targets = p.get("targets", [])
        if not targets:
            out.append(f"{name}: no targets")
        refs = [t.get("refId") for t in targets]
        if len(refs) != len(set(refs)):
            out.append(f"{name}: refIds not unique {refs}")
        for t in targets:
            if not (t.get("expr") or t.get("rawSql") or "").strip():
                out.append(f"{name}: target {t.get('refId')} has no expr")
        for holder in [p, *targets]:
            ds = holder.get("datasource")
            uid = ds.get("uid") if isinstance(ds, dict) else ds
            m = re.fullmatch(r"\$\{?(\w+)\}?", uid or "")
            if not (uid in (ds_uid, _store_uid()) or (m and m.group(1) in ds_vars)):
                out.append(f"{name}: datasource {ds!r} does not resolve to uid {ds_uid}")
    for text in _strings(doc.get("panels", [])):
        for var in variables(text):
            if var not in defined and var.split(".")[0] not in BUILTIN:
                out.append(f"${var} used but not defined (in {text[:60]!r})")
    return out


@pytest.fixture(scope="module")
def docs() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in FILES}


def test_three_dashboards_with_unique_uids(docs: dict[str, dict[str, Any]]) -> None:
    assert set(docs) == {"fleet-overview.json", "run-detail.json", "server-health.json"}
    uids = [d["uid"] for d in docs.values()]
    assert len(set(uids)) == 3


@pytest.mark.parametrize("name", [p.name for p in FILES])
def test_dashboard_is_structurally_valid(name: str, docs: dict[str, dict[str, Any]]) -> None:
    assert problems(docs[name], _provisioned_uid()) == []


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda d: d["panels"][1]["gridPos"].update(x=d["panels"][0]["gridPos"]["x"]), "overlaps"),
    (lambda d: d["panels"][1].update(id=d["panels"][0]["id"]), "panel ids not unique"),
    (lambda d: d["panels"][0]["gridPos"].update(x=20, w=8), "outside the 24-column grid"),
    (lambda d: d["panels"][0]["targets"][0].update(expr=""), "has no expr"),
    (lambda d: d["panels"][0]["targets"][0].update(expr="up{run=\"$nope\"}"), "$nope used"),
    (lambda d: d["panels"][0].update(datasource={"type": "prometheus", "uid": "other"}),
     "does not resolve"),
    (lambda d: d["templating"]["list"][0]["current"].update(value="other"), "does not default"),
    (lambda d: d.update(schemaVersion=27), "schemaVersion 27"),
])
def test_validator_finds_broken_dashboards(mutate: Any, expected: str,
                                           docs: dict[str, dict[str, Any]]) -> None:
    doc = copy.deepcopy(docs["run-detail.json"])
    mutate(doc)
    found = problems(doc, _provisioned_uid())
    assert any(expected in p for p in found), found


def _builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_dashboards",
                                                  GRAFANA / "build_dashboards.py")
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_committed_json_matches_the_builder(path: Path) -> None:
    assert path.read_text(encoding="utf-8") == _builder().render(path.name), (
        "run: python deploy/grafana/build_dashboards.py")


def test_every_metric_used_is_one_the_server_exports() -> None:
    unknown = set()
    for file, title, expr in all_expressions():
        for name in re.findall(r"\bspikewatch_[a-z0-9_]+", expr):
            if name not in SERVER_METRICS:
                unknown.add(f"{file} :: {title}: {name}")
    assert not unknown, sorted(unknown)


def _exprs(doc: dict[str, Any], kind: str | None = None) -> str:
    return "\n".join(t.get("expr", "") for p in _panels(doc["panels"]) if kind in (None, p["type"])
                     for t in p.get("targets", []))


def test_run_detail_covers_the_signals(docs: dict[str, dict[str, Any]]) -> None:
    doc = docs["run-detail.json"]
    assert [v["name"] for v in doc["templating"]["list"]] == ["datasource", "run"]
    text = _exprs(doc)
    for metric in ("stability_ratio", "stability_ratio_max", "stability_ratio_secant", "rho",
                   "sqrt_v_decay", "sa_sign_diversity", "grad_spike_share", "loss", "max_prob",
                   "agent_overhead"):
        assert f'spikewatch_run_{metric}{{run="$run"}}' in text, metric
    assert "spikewatch_run_alert_state" in _exprs(doc, "state-timeline")
    [ratio] = [p for p in _panels(doc["panels"]) if p["title"] == "Stability ratio vs threshold 1"]
    steps = ratio["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert {"value": 1.0, "color": "red"} in steps
    assert ratio["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] != "off"


def test_fleet_and_server_health_cover_their_subjects(docs: dict[str, dict[str, Any]]) -> None:
    fleet = _exprs(docs["fleet-overview.json"])
    for name in ("spikewatch_active_runs", "spikewatch_run_alert_state", "spikewatch_alerts_firing",
                 "spikewatch_run_stability_ratio", "spikewatch_run_phase"):
        assert name in fleet, name
    assert "spikewatch_run_phase" in _exprs(docs["fleet-overview.json"], "state-timeline")
    health = _exprs(docs["server-health.json"])
    for name in ("spikewatch_messages_received_total", "spikewatch_messages_invalid_total",
                 "spikewatch_messages_deduplicated_total", "spikewatch_points_written_total",
                 "histogram_quantile(0.5", "histogram_quantile(0.99",
                 "spikewatch_ingest_queue_depth", "spikewatch_notifications_total"):
        assert name in health, name


def test_dashboard_provider_points_at_the_mounted_folder() -> None:
    doc = yaml.safe_load((GRAFANA / "provisioning/dashboards/spikewatch.yml").read_text())
    [provider] = doc["providers"]
    assert provider["type"] == "file"
    compose = yaml.safe_load((DEPLOY / "compose/docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"../grafana/dashboards:{provider['options']['path']}:ro" in mounts
