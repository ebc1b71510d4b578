"""Loading a rule file: YAML text (safe loader, duplicate keys refused) into validated rules.

A file loads completely or not at all; a `RuleError` lists every problem, each naming the rule
and the field.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import ValidationError

from spikewatch.protocol.names import BY_NAME
from spikewatch.server.rules._errors import Problem, RuleError, problems
from spikewatch.server.rules._model import Rule, RuleFile

DEFAULT_PACK: Final = Path(__file__).with_name("default.yaml")


class RuleFileReadError(RuleError):
    """The rule file could not be read (missing, no permission, not UTF-8)."""


def load_rules(path: str | Path | None = None) -> list[Rule]:
    """Load and validate a rule file (None: the default pack). All or nothing."""
    p = DEFAULT_PACK if path is None else Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise RuleFileReadError(f"cannot read rule file: {reason}", source=str(p)) from e
    return parse_rules(text, source=str(p))


def parse_rules(text: str, *, source: str = "<rules>") -> list[Rule]:
    """Validate YAML text into rules. Raises `RuleError` naming the rule and field."""
    doc = _read_yaml(text, source)
    if not isinstance(doc, Mapping):
        raise RuleError("the file must be a mapping with a 'rules' list", source=source)
    extra = doc.get("extra_metrics")
    metrics = frozenset(BY_NAME) | frozenset(
        m for m in (extra if isinstance(extra, list) else []) if isinstance(m, str))
    try:
        rules = RuleFile.model_validate(doc, context={"metrics": metrics}).rules
    except ValidationError as e:
        raise RuleError(source=source,
                        problems=problems(e, doc.get("rules"))) from None
    twice = [name for name, n in Counter(r.name for r in rules).items() if n > 1]
    if twice:
        raise RuleError(source=source,
                        problems=[Problem("duplicate rule name", name, "name") for name in twice])
    return rules


def _read_yaml(text: str, source: str) -> Any:
    try:
        duplicate = _duplicate_key(yaml.compose(text, Loader=yaml.SafeLoader))
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RuleError(f"invalid YAML: {e}", source=source) from e
    if duplicate:
        raise RuleError(f"invalid YAML: {duplicate}", source=source)
    return doc


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
