"""Every PromQL expression spikewatch ships: Grafana dashboards and Prometheus rule files.

`all_expressions()` lists them as (file, title, expr) with Grafana's template variables still in;
`concrete(expr)` substitutes them so a real Prometheus can run the query. Used by the deploy tests
(parse check) and by the end-to-end test (each returns data with the real server scraped).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
RULES = ROOT / "deploy" / "prometheus" / "rules"

# Values for Grafana's built-in and the dashboards' own variables when querying Prometheus directly.
DEFAULTS: Mapping[str, str] = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
    "run": "demo",
}
_VAR = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")
_LABEL_VALUES = re.compile(r"^\s*label_values\((?:(.*),\s*)?(\w+)\s*\)\s*$", re.S)


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))  # collapsed rows hold their panels


def dashboard_expressions(path: Path) -> list[tuple[str, str, str]]:
    """(file, title, expr) for each panel target and query variable of one dashboard."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    out: list[tuple[str, str, str]] = []
    for panel in _panels(doc.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                out.append((_relative(path), f"{panel['title']} [{target['refId']}]",
                            target["expr"]))
    for var in doc.get("templating", {}).get("list", []):
        if var.get("type") != "query" or var.get("datasource", {}).get("type") != "prometheus":
            continue  # SQL variables (the store's runs) are not PromQL
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = _LABEL_VALUES.match(query)
        # label_values(metric, label) is Grafana's; the metric selector inside is PromQL.
        expr = (m.group(1) or "") if m else query
        if expr:
            out.append((_relative(path), f"variable ${var['name']}", expr))
    return out


def rule_expressions(path: Path) -> list[tuple[str, str, str]]:
    """(file, alert or record name, expr) for each rule of one Prometheus rule file."""
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [(_relative(path), rule.get("alert") or rule["record"], rule["expr"].strip())
            for group in doc["groups"] for rule in group["rules"]]


def all_expressions() -> list[tuple[str, str, str]]:
    """Every PromQL expression in the dashboards and rule files, as (file, title, expr)."""
    out: list[tuple[str, str, str]] = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        out += dashboard_expressions(path)
    for path in sorted(RULES.glob("*.yml")):
        out += rule_expressions(path)
    return out


def variables(expr: str) -> set[str]:
    """Names of the template variables an expression uses ($x, ${x}, ${x:fmt})."""
    return {a or b for a, b in _VAR.findall(expr)}


def concrete(expr: str, values: Mapping[str, str] | None = None) -> str:
    """The expression with template variables replaced; KeyError names an unknown variable."""
    vals = {**DEFAULTS, **(values or {})}

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in vals:
            raise KeyError(f"no value for template variable ${name} in {expr!r}")
        return vals[name]

    return _VAR.sub(sub, expr)
