"""The early-warning benchmark's command-line options (`python -m benchmarks.early_warning.runner`).

Kept apart from the runner so that parsing them needs neither torch nor the scenarios.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_options(p: argparse.ArgumentParser) -> None:
    """Add the benchmark's options to `p`."""
    p.add_argument("--quick", action="store_true", help="the small smoke-test subset")
    p.add_argument("--scenarios", default=None, metavar="A,B", help="only these scenarios")
    p.add_argument("--configs", default=None, metavar="C,..",
                   help="agent configurations to measure, comma-separated: 'default' (what a "
                        "user writes: attach(model, opt, run=, endpoint=), no closure) or "
                        "closure[-auto|-exact|-fd]|noclosure[-light|-default|-full][-BUDGET|-inf],"
                        " e.g. closure-exact-full-inf; default: only 'default' (see --list)")
    p.add_argument("--closure", default=None, choices=("auto", "exact", "fd"),
                   help="also measure a config that passes the closure with this curvature "
                        "(combined with --profile/--budget)")
    p.add_argument("--profile", default=None, choices=("light", "default", "full"),
                   help="also measure a config with this agent profile (library default: "
                        "default)")
    p.add_argument("--budget", default=None, metavar="FRACTION|inf",
                   help="also measure a config with this overhead_budget (inf: never stretch "
                        "cadences; library default 0.01)")
    p.add_argument("--rules", type=Path, default=None, metavar="FILE",
                   help="rule file for the server (default: the built-in pack)")
    p.add_argument("--keep", type=Path, default=None, metavar="DIR",
                   help="keep the server's SQLite database and log in DIR (for `backtest`)")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write rows")
    p.add_argument("--chunk", type=int, default=None, metavar="STEPS",
                   help="steps per interleaved timing chunk (default: about 12 chunks per run, "
                        "at least 25 steps)")
    p.add_argument("--pace-ms", type=float, default=50.0, metavar="MS",
                   help="both arms' steps take at least this wall time (default 50: a "
                        "small real job; these CPU models step in 1-10 ms and the agent's budget "
                        "is a share of step time); 0: as fast as they train")
    p.add_argument("--jobs", type=int, default=12,
                   help="scenarios trained at once, in worker processes (default 12: paced "
                        "steps mostly wait)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--list", action="store_true",
                   help="list the scenarios and the preset configs and exit")
