"""Grafana dashboard JSON from panel lists: the panel and query model, the 24-column layout,
datasource references and template variables (used by build_dashboards.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import store_sql as sql

DATASOURCE_UID = "spikewatch-prometheus"  # provisioning/datasources/prometheus.yml
SCHEMA_VERSION = 39
DS = {"type": "prometheus", "uid": "${datasource}"}
# The store's datasource (provisioning/datasources/postgres.yml) by its fixed uid: the SQL is
# written for spikewatch's schema, so pointing it at another datasource makes no sense.
STORE = {"type": "grafana-postgresql-datasource", "uid": "spikewatch-postgres"}

Json = dict[str, Any]



@dataclass
class Target:
    """One query of a panel: PromQL (`expr`), or SQL on the store (`sql`, a table)."""

    expr: str = ""
    legend: str = ""
    instant: bool = False
    table: bool = False
    sql: str = ""


@dataclass
class Panel:
    """A panel before layout: kind, size, queries and field options."""

    kind: str
    title: str
    targets: list[Target]
    w: int = 12
    h: int = 8
    unit: str = "none"
    description: str = ""
    thresholds: list[tuple[float | None, str]] = field(default_factory=list)
    threshold_line: bool = False
    mappings: dict[int, tuple[str, str]] = field(default_factory=dict)
    decimals: int | None = None
    log_scale: bool = False
    links: list[Json] = field(default_factory=list)
    extra_options: Json = field(default_factory=dict)
    transformations: list[Json] = field(default_factory=list)
    overrides: list[Json] = field(default_factory=list)


@dataclass
class Row:
    """A row header spanning the full width."""

    title: str


def _mappings(m: dict[int, tuple[str, str]]) -> list[Json]:
    if not m:
        return []
    return [{"type": "value", "options": {str(k): {"text": t, "color": c, "index": i}
                                          for i, (k, (t, c)) in enumerate(sorted(m.items()))}}]


def _thresholds(p: Panel) -> Json:
    steps = p.thresholds or [(None, "green")]
    return {"mode": "absolute", "steps": [{"value": v, "color": c} for v, c in steps]}


def sql_target(sql_text: str, ref: str) -> Json:
    return {"refId": ref, "datasource": STORE, "editorMode": "code", "format": "table",
            "rawQuery": True, "rawSql": sql_text}


def _target(t: Target, ref: str) -> Json:
    if t.sql:
        return sql_target(t.sql, ref)
    out: Json = {"refId": ref, "datasource": DS, "expr": t.expr, "legendFormat": t.legend,
                 "range": not t.instant, "instant": t.instant}
    if t.table:
        out["format"] = "table"
    return out


def _panel(p: Panel, pid: int, x: int, y: int) -> Json:
    custom: Json = {}
    options: Json = {}
    if p.kind in ("timeseries", "trend"):
        custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 0, "showPoints": "never",
                  "spanNulls": True,
                  "thresholdsStyle": {"mode": "dashed" if p.threshold_line else "off"},
                  "scaleDistribution": ({"type": "log", "log": 10} if p.log_scale
                                        else {"type": "linear"})}
        options = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                   "tooltip": {"mode": "multi", "sort": "desc"}}
    elif p.kind == "state-timeline":
        custom = {"fillOpacity": 80, "lineWidth": 0}
        options = {"showValue": "never", "mergeValues": True, "rowHeight": 0.8,
                   "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                   "tooltip": {"mode": "single"}}
    elif p.kind == "stat":
        options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                   "colorMode": "background", "graphMode": "none", "textMode": "auto",
                   "justifyMode": "auto", "orientation": "auto"}
    elif p.kind == "table":
        custom = {"align": "auto", "cellOptions": {"type": "auto"}}
        options = {"showHeader": True, "cellHeight": "sm"}
    options.update(p.extra_options)
    defaults: Json = {"unit": p.unit, "custom": custom, "thresholds": _thresholds(p),
                      "mappings": _mappings(p.mappings),
                      "color": {"mode": "thresholds" if p.kind in ("stat", "table",
                                                                   "state-timeline")
                                else "palette-classic"}}
    if p.decimals is not None:
        defaults["decimals"] = p.decimals
    if p.links:
        defaults["links"] = p.links
    refs = "ABCDEFGHIJ"
    ds = STORE if all(t.sql for t in p.targets) else DS
    out: Json = {"id": pid, "type": p.kind, "title": p.title, "description": p.description,
                 "datasource": ds, "gridPos": {"x": x, "y": y, "w": p.w, "h": p.h},
                 "targets": [_target(t, refs[i]) for i, t in enumerate(p.targets)],
                 "fieldConfig": {"defaults": defaults, "overrides": p.overrides},
                 "options": options}
    if p.transformations:
        out["transformations"] = p.transformations
    return out


def _layout(items: list[Panel | Row]) -> list[Json]:
    """Left-to-right, top-to-bottom packing on Grafana's 24-column grid."""
    panels: list[Json] = []
    x = y = row_h = 0
    for pid, item in enumerate(items, start=1):
        if isinstance(item, Row):
            if x:
                y, x, row_h = y + row_h, 0, 0
            panels.append({"id": pid, "type": "row", "title": item.title, "collapsed": False,
                           "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []})
            y += 1
            continue
        if x + item.w > 24:
            y, x, row_h = y + row_h, 0, 0
        panels.append(_panel(item, pid, x, y))
        x += item.w
        row_h = max(row_h, item.h)
    return panels


def _variables(run: bool) -> list[Json]:
    out: list[Json] = [{
        "name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
        "current": {"text": "Prometheus", "value": DATASOURCE_UID}, "hide": 0,
        "refresh": 1, "regex": "", "options": [],
    }]
    if run:
        # every run in the store, finished ones too (Prometheus only knows the active ones)
        out.append({
            "name": "run", "label": "Run", "type": "query", "datasource": STORE,
            "query": sql.RUNS, "definition": sql.RUNS, "refresh": 2,
            "sort": 0, "multi": False, "includeAll": False, "hide": 0, "regex": "",
            "current": {}, "options": [],
        })
    return out


def dashboard(uid: str, title: str, description: str, items: list[Panel | Row],
              run_variable: bool = False, annotations: list[Json] | None = None) -> Json:
    """A complete dashboard document."""
    return {
        "uid": uid, "title": title, "description": description, "tags": ["spikewatch"],
        "schemaVersion": SCHEMA_VERSION, "version": 1, "editable": True, "graphTooltip": 1,
        "time": {"from": "now-1h", "to": "now"}, "refresh": "10s", "timezone": "",
        "fiscalYearStartMonth": 0, "liveNow": False, "weekStart": "",
        "timepicker": {},
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts", "type": "dashboard"}, *(annotations or [])]},
        "links": [{"title": "spikewatch", "type": "dashboards", "tags": ["spikewatch"],
                   "asDropdown": True, "includeVars": False, "keepTime": True}],
        "templating": {"list": _variables(run_variable)},
        "panels": _layout(items),
    }
