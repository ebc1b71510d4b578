"""Declarative alert rules: YAML definitions, the default pack, and the per-run rule engine."""

from spikewatch.server.rules._engine import ActiveAlert, RuleEngine
from spikewatch.server.rules._errors import Problem, RuleError
from spikewatch.server.rules._load import DEFAULT_PACK, load_rules, parse_rules
from spikewatch.server.rules._model import Rule

__all__ = ["DEFAULT_PACK", "ActiveAlert", "Problem", "Rule", "RuleEngine", "RuleError",
           "load_rules", "parse_rules"]
