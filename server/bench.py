"""`spikewatch bench early-warning`: the early-warning benchmark (benchmarks/early_warning/).

The benchmark trains PyTorch models, so torch and the benchmark package are imported only when the
command runs; the server CLI starts without them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]


def _runner() -> Any:
    """The runner module; the benchmarks live in the source tree next to `server/`."""
    if not (_ROOT / "benchmarks" / "early_warning").is_dir():
        raise ImportError(f"benchmarks/early_warning not found under {_ROOT} (a source checkout "
                          "is needed to run the benchmark)")
    if str(_ROOT) not in sys.path:
        sys.path.insert(0, str(_ROOT))
    from benchmarks.early_warning import runner

    return runner


def _early_warning(args: argparse.Namespace) -> int:
    try:
        runner = _runner()
    except ImportError as e:
        print(f"spikewatch bench early-warning: {e}", file=sys.stderr)
        return 2
    return int(runner.main(args))


def register(subparsers: Any) -> None:
    """Add `spikewatch bench early-warning [options]`."""
    bench: argparse.ArgumentParser = subparsers.add_parser(
        "bench", help="benchmarks (early-warning quality)",
        description="Run a spikewatch benchmark.")  # fmt: skip
    sub = bench.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    p: argparse.ArgumentParser = sub.add_parser(
        "early-warning", help="train spiking and stable scenarios against a real server and "
        "score the pages (recall, lead, false pages)",
        description="Train deterministic CPU scenarios with the agent attached to a real server "
        "(by default exactly as a user attaches it) and, interleaved, without it; score the "
        "alerts against the loss spikes and report the step-time ratio.")  # fmt: skip
    add_options(p)
    p.set_defaults(func=_early_warning)


def add_options(p: argparse.ArgumentParser) -> None:
    """The benchmark's options (shared with `python -m benchmarks.early_warning.runner`)."""
    # defined here so the CLI parser needs neither torch nor the benchmark package
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
