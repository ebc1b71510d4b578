"""Rule file errors: every problem names the file, the rule and the field.

pydantic reports where a value failed as a location (`('rules', 2, 'condition', 'all', 'all', 0,
'metric', 'value')`); `problems` turns that into the rule's name and a field path as the file
spells it (`condition.all[0].value`) and words the message for a person editing YAML.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from spikewatch.server.rules._condition_model import CONDITION_TAGS, NAME_PATTERN

_RULE_NAME: Final = re.compile(NAME_PATTERN)


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong in a rule file: the rule (name, or #position) and field, and what."""

    message: str
    rule: str = ""
    field: str = ""

    def describe(self, source: str) -> str:
        """`source: rule 'x': field: message`, leaving out what is empty."""
        where = [source and f"{source}:", self.rule and f"rule {self.rule!r}:",
                 self.field and f"{self.field}:"]
        return " ".join([*filter(None, where), self.message])


class RuleError(ValueError):
    """A rule file that cannot be loaded. `problems` holds every error found (one at least);
    `rule` and `field` are the first one's (either may be empty)."""

    def __init__(self, message: str = "", *, rule: str = "", field: str = "", source: str = "",
                 problems: Sequence[Problem] = ()) -> None:
        self.problems = tuple(problems) or (Problem(message, rule, field),)
        self.source = source
        super().__init__("\n".join(p.describe(source) for p in self.problems))

    @property
    def rule(self) -> str:
        return self.problems[0].rule

    @property
    def field(self) -> str:
        return self.problems[0].field


def problems(error: ValidationError, raw_rules: object) -> list[Problem]:
    """Each error of validating a rule file, located by rule and field (`raw_rules`: the file's
    `rules` list as read, which names the rules)."""
    return [_problem(e, raw_rules) for e in error.errors(include_url=False)]


def _problem(e: ErrorDetails, raw_rules: object) -> Problem:
    loc, rule = list(e["loc"]), ""
    if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
        rule, loc = _rule_label(raw_rules, loc[1]), loc[2:]
    ctx: Mapping[str, Any] = e.get("ctx") or {}
    if "field" in ctx:
        loc.append(str(ctx["field"]))
    return Problem(_message(e), rule, _field_path(loc))


def _rule_label(raw_rules: object, index: int) -> str:
    """The rule's name where it is a valid one, else its position (#1 is the first)."""
    item = raw_rules[index] if isinstance(raw_rules, list) and index < len(raw_rules) else None
    name = item.get("name") if isinstance(item, Mapping) else None
    return name if isinstance(name, str) and _RULE_NAME.match(name) else f"#{index + 1}"


def _field_path(loc: Sequence[int | str]) -> str:
    """`condition.any[1].window_steps` from a pydantic location within one rule."""
    out = ""
    at_condition = False  # the part before was a condition's place: pydantic adds its tag next
    for part in loc:
        # "[key]": the error is in a mapping's key, the part before it
        if (at_condition and part in CONDITION_TAGS) or part == "[key]":
            at_condition = False
            continue
        if isinstance(part, int):
            at_condition = out.endswith((".all", ".any"))
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else part
            at_condition = out == "condition"
    return out


def _message(e: ErrorDetails) -> str:
    """pydantic's message in the file's terms ('must be ...'), with the value it got."""
    if e["type"] == "missing":
        return "required"
    msg = re.sub(r"^(Input|List|Dictionary|String) should( be)?", lambda m: "must" + (m[2] or ""),
                 e["msg"]).replace(" after validation", "")
    if msg == e["msg"] or e["type"] in ("too_short", "too_long"):
        return msg  # ours (already says what it got) or one that counts
    return f"{msg} (got {repr(e['input'])[:60]})"
