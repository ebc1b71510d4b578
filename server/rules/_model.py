"""Typed alert-rule definitions and their YAML loading/validation (no eval of user strings).

A rule file is a YAML mapping::

    extra_metrics: [my_metric]     # optional: custom names besides protocol.names.CATALOGUE
    rules:
      - name: predicted_loss_spike
        severity: page             # info | warning | page
        condition: {...}           # see below
        for_steps: 8               # sustained for N consecutive observations (default 1)
        for_seconds: 0             # and for T seconds of step time (default 0)
        keep_firing_steps: 0       # stay firing N observations after the condition clears
        stale_steps: 50            # default carry-over of a missing metric for the leaves
        labels: {team: ml}
        annotations: {summary: ..., description: ..., runbook: ...}

A condition is exactly one of::

    {metric: M, op: ">=", value: 1.0[, stale_steps: N][, absent_is: false]}
    {rate: M, window_steps: 50, mode: ratio_to_min, op: ">", value: 2.0[, min_points: 1] ...}
    {event: momentum_jump[, where: {rescaled: false}]}
    {nonfinite: M[, stale_steps: N][, absent_is: false]}
    {all: [condition, ...]}   {any: [condition, ...]}   (nested at most MAX_DEPTH deep)

Every error is a `RuleError` naming the rule and the field; a file with any error loads nothing.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias

import yaml

from spikewatch.protocol.names import BY_NAME, EventType
from spikewatch.protocol.wire import Scalar
from spikewatch.server.types import Severity

Op: TypeAlias = Literal[">", ">=", "<", "<="]
OPS: Final[tuple[Op, ...]] = (">", ">=", "<", "<=")

MAX_DEPTH: Final = 4  # nesting of all/any
MAX_CHILDREN: Final = 16
MAX_RULES: Final = 1000
MAX_WINDOW_STEPS: Final = 10_000
MAX_STALE_STEPS: Final = 1_000_000
MAX_FOR_STEPS: Final = 1_000_000
DEFAULT_STALE_STEPS: Final = 50
RESERVED_LABELS: Final = frozenset({"alertname", "run", "severity"})

_NAME_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_LABEL_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_KEY_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,127}$")
DEFAULT_PACK: Final = Path(__file__).with_name("default.yaml")


class RuleError(ValueError):
    """A rule file that cannot be loaded. `rule` and `field` say where (either may be empty)."""

    def __init__(self, message: str, *, rule: str = "", field: str = "", source: str = "") -> None:
        where = " ".join(
            p
            for p in (source and f"{source}:", rule and f"rule {rule!r}:", field and f"{field}:")
            if p
        )
        super().__init__(f"{where} {message}" if where else message)
        self.rule = rule
        self.field = field
        self.source = source


class RateMode(StrEnum):
    """How `rate` compares the current value with the window of previous steps."""

    PER_STEP = "per_step"  # (x_now − x_oldest) / (steps between)
    RATIO_TO_MIN = "ratio_to_min"  # x_now / min(window)
    RATIO_TO_MAX = "ratio_to_max"  # x_now / max(window)
    RATIO_TO_MEAN = "ratio_to_mean"  # x_now / mean(window)


@dataclass(frozen=True, slots=True)
class Threshold:
    """`metric op value` on the current (or carried-over) value of a metric."""

    metric: str
    op: Op
    value: float
    stale_steps: int = DEFAULT_STALE_STEPS
    absent_is: bool = False


@dataclass(frozen=True, slots=True)
class Rate:
    """Change per step, or ratio to the min/max/mean, over the previous `window_steps` steps."""

    metric: str
    window_steps: int
    mode: RateMode
    op: Op
    value: float
    min_points: int = 1
    stale_steps: int = DEFAULT_STALE_STEPS
    absent_is: bool = False


@dataclass(frozen=True, slots=True)
class EventSeen:
    """An event of this type at the observed step, optionally with data equal to `where`."""

    event: str
    where: tuple[tuple[str, Scalar], ...] = ()


@dataclass(frozen=True, slots=True)
class NonFinite:
    """The metric's value is NaN or ±Inf."""

    metric: str
    stale_steps: int = DEFAULT_STALE_STEPS
    absent_is: bool = False


@dataclass(frozen=True, slots=True)
class AllOf:
    conditions: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    conditions: tuple[Condition, ...]


Condition: TypeAlias = Threshold | Rate | EventSeen | NonFinite | AllOf | AnyOf


@dataclass(frozen=True, slots=True)
class Rule:
    """One alert rule: when `condition` holds sustained, the alert fires at `severity`."""

    name: str
    severity: Severity
    condition: Condition
    for_steps: int = 1
    for_seconds: float = 0.0
    keep_firing_steps: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def description(self) -> str:
        """The description annotation, else the summary."""
        return self.annotations.get("description") or self.annotations.get("summary", "")

    def metrics(self) -> frozenset[str]:
        """Every metric the condition reads."""
        return frozenset(_metrics(self.condition))

    def windows(self) -> dict[str, int]:
        """The longest `rate` window per metric (how much history the engine keeps)."""
        out: dict[str, int] = {}
        for c in _leaves(self.condition):
            if isinstance(c, Rate):
                out[c.metric] = max(out.get(c.metric, 0), c.window_steps)
        return out

    def to_dict(self) -> dict[str, Any]:
        """The rule in its YAML form (loading it back gives an equal rule)."""
        return {
            "name": self.name,
            "severity": self.severity.value,
            "condition": condition_to_dict(self.condition),
            "for_steps": self.for_steps,
            "for_seconds": self.for_seconds,
            "keep_firing_steps": self.keep_firing_steps,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
        }


def _leaves(c: Condition) -> list[Condition]:
    if isinstance(c, AllOf | AnyOf):
        return [leaf for child in c.conditions for leaf in _leaves(child)]
    return [c]


def _metrics(c: Condition) -> list[str]:
    return [leaf.metric for leaf in _leaves(c) if isinstance(leaf, Threshold | Rate | NonFinite)]


def condition_to_dict(c: Condition) -> dict[str, Any]:
    """A condition in its YAML form."""
    if isinstance(c, AllOf):
        return {"all": [condition_to_dict(x) for x in c.conditions]}
    if isinstance(c, AnyOf):
        return {"any": [condition_to_dict(x) for x in c.conditions]}
    if isinstance(c, EventSeen):
        return {"event": c.event, "where": dict(c.where)} if c.where else {"event": c.event}
    if isinstance(c, NonFinite):
        return {"nonfinite": c.metric, "stale_steps": c.stale_steps, "absent_is": c.absent_is}
    if isinstance(c, Rate):
        return {
            "rate": c.metric,
            "window_steps": c.window_steps,
            "mode": c.mode.value,
            "op": c.op,
            "value": c.value,
            "min_points": c.min_points,
            "stale_steps": c.stale_steps,
            "absent_is": c.absent_is,
        }
    return {
        "metric": c.metric,
        "op": c.op,
        "value": c.value,
        "stale_steps": c.stale_steps,
        "absent_is": c.absent_is,
    }


# --- loading ---------------------------------------------------------------------------------


def _duplicate_key(node: Any) -> str | None:
    """The first duplicate mapping key in a composed YAML tree (YAML silently keeps the last)."""
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, yaml.MappingNode):
            keys = [k.value for k, _ in n.value if isinstance(k, yaml.ScalarNode)]
            for k in keys:
                if keys.count(k) > 1:
                    return f"duplicate key {k!r} (line {n.start_mark.line + 1})"
            stack.extend(v for _, v in n.value)
        elif isinstance(n, yaml.SequenceNode):
            stack.extend(n.value)
    return None


def load_rules(path: str | Path | None = None) -> list[Rule]:
    """Load and validate a rule file (None: the default pack). All or nothing."""
    p = DEFAULT_PACK if path is None else Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise RuleError(f"cannot read rule file: {e.strerror or e}", source=str(p)) from e
    return parse_rules(text, source=str(p))


def parse_rules(text: str, *, source: str = "<rules>") -> list[Rule]:
    """Validate YAML text into rules. Raises `RuleError` naming the rule and field."""
    try:
        dup = _duplicate_key(yaml.compose(text, Loader=yaml.SafeLoader))
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RuleError(f"invalid YAML: {e}", source=source) from e
    if dup:
        raise RuleError(f"invalid YAML: {dup}", source=source)
    if not isinstance(doc, Mapping):
        raise RuleError("the file must be a mapping with a 'rules' list", source=source)
    _no_unknown(doc, {"rules", "extra_metrics"}, "", "", source)
    extra = doc.get("extra_metrics", [])
    if not isinstance(extra, list) or not all(
        isinstance(m, str) and _NAME_RE.match(m) for m in extra
    ):
        raise RuleError("must be a list of metric names", field="extra_metrics", source=source)
    raw = doc.get("rules")
    if not isinstance(raw, list) or not raw:
        raise RuleError("must be a non-empty list", field="rules", source=source)
    if len(raw) > MAX_RULES:
        raise RuleError(f"at most {MAX_RULES} rules", field="rules", source=source)
    parser = _Parser(source, frozenset(BY_NAME) | frozenset(extra))
    rules: list[Rule] = []
    names: set[str] = set()
    for i, item in enumerate(raw):
        rule = parser.rule(item, i)
        if rule.name in names:
            raise RuleError("duplicate rule name", rule=rule.name, field="name", source=source)
        names.add(rule.name)
        rules.append(rule)
    return rules


def _no_unknown(d: Mapping[Any, Any], allowed: set[str], rule: str, path: str, src: str) -> None:
    for k in d:
        if k not in allowed:
            hint = difflib.get_close_matches(str(k), sorted(allowed), n=1)
            more = (
                f" (did you mean {hint[0]!r}?)"
                if hint
                else f" (allowed: {', '.join(sorted(allowed))})"
            )
            raise RuleError(
                f"unknown key {k!r}{more}", rule=rule, field=_join(path, str(k)), source=src
            )


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _Parser:
    def __init__(self, source: str, metrics: frozenset[str]) -> None:
        self.source = source
        self.metrics = metrics
        self.rule_name = ""

    def err(self, message: str, path: str) -> RuleError:
        return RuleError(message, rule=self.rule_name, field=path, source=self.source)

    def rule(self, item: object, index: int) -> Rule:
        self.rule_name = f"#{index + 1}"
        if not isinstance(item, Mapping):
            raise self.err("each rule must be a mapping", "")
        name = item.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise self.err("required; letters, digits and _ (a Prometheus label value)", "name")
        self.rule_name = name
        _no_unknown(
            item,
            {
                "name",
                "severity",
                "condition",
                "for_steps",
                "for_seconds",
                "keep_firing_steps",
                "stale_steps",
                "labels",
                "annotations",
            },
            name,
            "",
            self.source,
        )
        sev = item.get("severity")
        if sev not in {s.value for s in Severity}:
            raise self.err(f"must be one of info, warning, page (got {sev!r})", "severity")
        stale = self.int_(
            item.get("stale_steps", DEFAULT_STALE_STEPS), "stale_steps", 0, MAX_STALE_STEPS
        )
        if "condition" not in item:
            raise self.err("required", "condition")
        cond = self.condition(item["condition"], "condition", 0, stale)
        for_seconds = self.number(item.get("for_seconds", 0.0), "for_seconds")
        if for_seconds < 0:
            raise self.err("must be ≥ 0", "for_seconds")
        return Rule(
            name=name,
            severity=Severity(sev),
            condition=cond,
            for_steps=self.int_(item.get("for_steps", 1), "for_steps", 1, MAX_FOR_STEPS),
            for_seconds=for_seconds,
            keep_firing_steps=self.int_(
                item.get("keep_firing_steps", 0), "keep_firing_steps", 0, MAX_FOR_STEPS
            ),
            labels=self.strings(item.get("labels", {}), "labels", labels=True),
            annotations=self.strings(item.get("annotations", {}), "annotations", labels=False),
        )

    def condition(self, raw: object, path: str, depth: int, stale: int) -> Condition:
        if not isinstance(raw, Mapping):
            raise self.err("a condition must be a mapping", path)
        kinds = [k for k in ("metric", "rate", "event", "nonfinite", "all", "any") if k in raw]
        if len(kinds) != 1:
            raise self.err(
                "needs exactly one of metric, rate, event, nonfinite, all, any "
                f"(got {', '.join(kinds) or 'none'})",
                path,
            )
        kind = kinds[0]
        if kind in ("all", "any"):
            _no_unknown(raw, {kind}, self.rule_name, path, self.source)
            if depth >= MAX_DEPTH:
                raise self.err(f"all/any nested deeper than {MAX_DEPTH}", _join(path, kind))
            items = raw[kind]
            if not isinstance(items, list) or not 1 <= len(items) <= MAX_CHILDREN:
                raise self.err(
                    f"must be a list of 1 to {MAX_CHILDREN} conditions", _join(path, kind)
                )
            children = tuple(
                self.condition(c, f"{path}.{kind}[{i}]", depth + 1, stale)
                for i, c in enumerate(items)
            )
            return AllOf(children) if kind == "all" else AnyOf(children)
        if kind == "event":
            _no_unknown(raw, {"event", "where"}, self.rule_name, path, self.source)
            ev = raw["event"]
            known = {e.value for e in EventType}
            if ev not in known:
                raise self.err(
                    f"unknown event type {ev!r}{self.hint(ev, known)}", _join(path, "event")
                )
            where = raw.get("where", {})
            if not isinstance(where, Mapping) or not all(
                isinstance(k, str)
                and _KEY_RE.match(k)
                and (v is None or isinstance(v, bool | int | float | str))
                for k, v in where.items()
            ):
                raise self.err("must map data keys to scalar values", _join(path, "where"))
            return EventSeen(str(ev), tuple(sorted(where.items())))
        common = {"stale_steps", "absent_is"}
        metric = self.metric(raw[kind], _join(path, kind))
        st = self.int_(
            raw.get("stale_steps", stale), _join(path, "stale_steps"), 0, MAX_STALE_STEPS
        )
        absent = raw.get("absent_is", False)
        if not isinstance(absent, bool):
            raise self.err("must be true or false", _join(path, "absent_is"))
        if kind == "nonfinite":
            _no_unknown(raw, {"nonfinite"} | common, self.rule_name, path, self.source)
            return NonFinite(metric, st, absent)
        op = raw.get("op")
        if op not in OPS:
            raise self.err(f"must be one of {', '.join(OPS)} (got {op!r})", _join(path, "op"))
        if "value" not in raw:
            raise self.err("required", _join(path, "value"))
        value = self.number(raw["value"], _join(path, "value"))
        if kind == "metric":
            _no_unknown(raw, {"metric", "op", "value"} | common, self.rule_name, path, self.source)
            return Threshold(metric, op, value, st, absent)
        _no_unknown(
            raw,
            {"rate", "window_steps", "mode", "op", "value", "min_points"} | common,
            self.rule_name,
            path,
            self.source,
        )
        if "window_steps" not in raw:
            raise self.err("required", _join(path, "window_steps"))
        window = self.int_(raw["window_steps"], _join(path, "window_steps"), 1, MAX_WINDOW_STEPS)
        mode = raw.get("mode", RateMode.PER_STEP.value)
        if mode not in {m.value for m in RateMode}:
            raise self.err(
                f"must be one of {', '.join(m.value for m in RateMode)} (got {mode!r})",
                _join(path, "mode"),
            )
        min_points = self.int_(raw.get("min_points", 1), _join(path, "min_points"), 1, window)
        return Rate(metric, window, RateMode(mode), op, value, min_points, st, absent)

    def metric(self, raw: object, path: str) -> str:
        if not isinstance(raw, str) or raw not in self.metrics:
            raise self.err(
                f"unknown metric {raw!r}{self.hint(raw, self.metrics)} "
                "(declare custom ones in extra_metrics)",
                path,
            )
        return raw

    @staticmethod
    def hint(raw: object, known: set[str] | frozenset[str]) -> str:
        close = difflib.get_close_matches(str(raw), sorted(known), n=1)
        return f" (did you mean {close[0]!r}?)" if close else ""

    def int_(self, raw: object, path: str, lo: int, hi: int) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int) or not lo <= raw <= hi:
            raise self.err(f"must be an integer in [{lo}, {hi}] (got {raw!r})", path)
        return raw

    def number(self, raw: object, path: str) -> float:
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
            raise self.err(f"must be a finite number (got {raw!r})", path)
        return float(raw)

    def strings(self, raw: object, path: str, *, labels: bool) -> dict[str, str]:
        if not isinstance(raw, Mapping):
            raise self.err("must be a mapping of names to strings", path)
        out: dict[str, str] = {}
        for k, v in raw.items():
            if not isinstance(k, str) or not _LABEL_RE.match(k) or k.startswith("__"):
                raise self.err("invalid name (letters, digits and _)", _join(path, str(k)))
            if labels and k in RESERVED_LABELS:
                raise self.err("reserved label (set by spikewatch)", _join(path, k))
            if not isinstance(v, str):
                raise self.err(f"must be a string (got {type(v).__name__})", _join(path, k))
            out[k] = v
        return out
