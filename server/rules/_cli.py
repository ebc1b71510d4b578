"""`spikewatch rules check FILE`: validate a rule file offline, as `spikewatch serve` would load it.

Exit status 0 when the file is valid (one line: how many rules, and their names), 1 when it is
not (one line per error, naming the rule and the field), 2 when it cannot be read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from spikewatch.server.rules._errors import RuleError
from spikewatch.server.rules._load import RuleFileReadError, load_rules


def register(sub: Any) -> None:
    """Add `rules check` to the `spikewatch` subcommands."""
    rules = sub.add_parser("rules", help="alert rule files",
                           description="Work with alert rule files (docs/rules.md).")
    actions = rules.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = actions.add_parser("check", help="validate a rule file without a server",
                               description="Validate a rule file: exit 0 when valid, 1 with "
                                           "each error when not, 2 when it cannot be read.")
    check.add_argument("file", type=Path, metavar="FILE", help="the YAML rule file")
    check.set_defaults(func=check_file)


def check_file(args: argparse.Namespace) -> int:
    """Validate `args.file`; print a summary (stdout) or the errors (stderr); the exit status."""
    try:
        rules = load_rules(args.file)
    except RuleFileReadError as e:
        print(e, file=sys.stderr)
        return 2
    except RuleError as e:
        print(e, file=sys.stderr)
        return 1
    names = ", ".join(r.name for r in rules)
    print(f"{args.file}: valid, {len(rules)} rule{'s' if len(rules) != 1 else ''}: {names}")
    return 0
