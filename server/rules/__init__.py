"""Declarative alert rules: YAML definitions, the default pack, and the per-run rule engine."""

from spikewatch.server.rules._engine import ActiveAlert, RuleEngine
from spikewatch.server.rules._model import DEFAULT_PACK, Rule, RuleError, load_rules, parse_rules

__all__ = ["DEFAULT_PACK", "ActiveAlert", "Rule", "RuleEngine", "RuleError", "load_rules",
           "parse_rules"]
