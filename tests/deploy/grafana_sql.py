"""The SQL the Grafana dashboards send to a PostgreSQL datasource, made runnable as Grafana does.

`sql_queries(doc)` finds every query (panel targets, annotations, query variables) of a dashboard;
`concrete(sql, ...)` does what Grafana does before PostgreSQL sees it, for the only variables and
macros the dashboards use: the frontend interpolates template variables (a single-value variable
becomes its value with `'` doubled and no quotes added, which is why the SQL writes `'$run'`),
then the backend expands the macros (`$__unixEpochFilter(col)` to `col >= FROM AND col <= TO`,
`$__unixEpochFrom()` / `$__unixEpochTo()` to the range's ends, whole Unix seconds). Anything
else raises KeyError, so a new macro in a dashboard fails the tests until it is substituted here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

MACROS = frozenset({"unixEpochFilter", "unixEpochFrom", "unixEpochTo"})
_MACRO = re.compile(r"\$__(\w+)\(([^)]*)\)")
_VAR = re.compile(r"\$(?:\{(\w+)\}|(?!__)(\w+))")
_ANY = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))


def sql_queries(doc: dict[str, Any]) -> dict[str, str]:
    """Every SQL query of a dashboard by where it is: 'panel TITLE [REF]', 'annotation NAME' or
    'variable $NAME'."""
    out: dict[str, str] = {}
    for p in _panels(doc.get("panels", [])):
        for t in p.get("targets", []):
            if "rawSql" in t:
                out[f"panel {p['title']} [{t['refId']}]"] = t["rawSql"]
    for a in doc.get("annotations", {}).get("list", []):
        if "rawSql" in a.get("target", {}):
            out[f"annotation {a['name']}"] = a["target"]["rawSql"]
    for v in doc.get("templating", {}).get("list", []):
        if v.get("type") == "query" and "postgres" in v.get("datasource", {}).get("type", ""):
            out[f"variable ${v['name']}"] = v["query"]
    return out


def placeholders(sql: str) -> tuple[set[str], set[str]]:
    """(template variables, macros) that `sql` uses."""
    macros = {m.group(1) for m in _MACRO.finditer(sql)}
    names = {a or b for a, b in _ANY.findall(_MACRO.sub("", sql))}
    return names, macros


def concrete(sql: str, variables: Mapping[str, str], time_from: float, time_to: float) -> str:
    """`sql` as Grafana's PostgreSQL datasource runs it for these variables and time range."""

    def variable(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in variables:
            raise KeyError(f"no value for template variable ${name}")
        return variables[name].replace("'", "''")

    frm, to = int(time_from), int(time_to)

    def macro(m: re.Match[str]) -> str:
        name, arg = m.group(1), m.group(2).strip()
        if name == "unixEpochFilter" and arg:
            return f"{arg} >= {frm} AND {arg} <= {to}"
        if name == "unixEpochFrom" and not arg:
            return str(frm)
        if name == "unixEpochTo" and not arg:
            return str(to)
        raise KeyError(f"macro $__{name}({arg}) is not one this test substitutes")

    return _MACRO.sub(macro, _VAR.sub(variable, sql))
