"""`spikewatch bench early-warning|guard [--checkout DIR] [ARGS ...]`: run a benchmark.

The benchmarks train the early-warning suite (`benchmarks/early_warning`, `benchmarks/guard.py`)
and live in the source checkout, not in the installed package: nothing shipped imports them.
This command finds the checkout (``--checkout``, ``$SPIKEWATCH_CHECKOUT``, the checkout an
editable install runs from, or the current directory) and runs the benchmark there in a child
Python, handing it every argument it does not know itself (``spikewatch bench early-warning
--scenarios A,B --json rows.json``; ``-- --help`` shows the benchmark's own options). From a
wheel, without a checkout, it says so and exits 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

from spikewatch.server._settings import ConfigError

CHECKOUT_ENV: Final = "SPIKEWATCH_CHECKOUT"
BENCHMARKS: Final = {  # command -> (module run with -m, file that marks a checkout, help)
    "early-warning": ("benchmarks.early_warning.runner", "benchmarks/early_warning/runner.py",
                      "the early-warning suite with and without the agent, scored on a real "
                      "server (attach defaults, no closure)"),
    "guard": ("benchmarks.guard", "benchmarks/guard.py",
              "the suite with and without attach(guard=True) and the reactive baselines"),
}


def _installed_root() -> Path:
    """The directory above the imported `spikewatch` package (a checkout's root when the
    package is installed editable or run from the checkout)."""
    import spikewatch

    return Path(spikewatch.__file__).resolve().parent.parent


def find_checkout(name: str, given: Path | None) -> Path:
    """The checkout that holds benchmark `name`; ConfigError naming where it looked if none."""
    marker = BENCHMARKS[name][1]
    env = os.environ.get(CHECKOUT_ENV)
    if given is not None or env:
        root = (given or Path(env or "")).expanduser().resolve()
        if not (root / marker).is_file():
            raise ConfigError(f"{root} is not a spikewatch source checkout (no {marker})")
        return root
    candidates = [_installed_root(), Path.cwd().resolve()]
    for root in candidates:
        if (root / marker).is_file():
            return root
    raise ConfigError(
        "the benchmarks run from a spikewatch source checkout; they are not installed with the "
        f"package (looked in {', '.join(str(c) for c in candidates)}): clone the repository and "
        f"run this from it, or pass --checkout DIR (or set ${CHECKOUT_ENV})")


def run(args: argparse.Namespace) -> int:
    """Run the chosen benchmark in a child Python; its exit status is this command's."""
    root = find_checkout(args.benchmark, args.checkout)
    if importlib.util.find_spec("torch") is None:
        raise ConfigError("the benchmarks train models: install torch in this environment "
                          "(pip install torch; `make install` in the checkout pins a CPU build)")
    forwarded = list(args.forwarded)
    if forwarded[:1] == ["--"]:
        forwarded = forwarded[1:]
    module = BENCHMARKS[args.benchmark][0]
    return subprocess.run([sys.executable, "-m", module, *forwarded], cwd=root,
                          check=False).returncode


def register(subparsers: Any) -> None:
    """Add `spikewatch bench early-warning|guard`."""
    bench: argparse.ArgumentParser = subparsers.add_parser(
        "bench", help="run a benchmark of the source checkout (early-warning, guard)",
        description="Run one of the benchmarks that live in the source checkout. Arguments "
        "this command does not know go to the benchmark (`-- --help` lists them).")
    which = bench.add_subparsers(dest="benchmark", required=True, metavar="ACTION")
    for name, (module, _, text) in BENCHMARKS.items():
        p = which.add_parser(name, help=text, allow_abbrev=False,
                             usage="%(prog)s [-h] [--checkout DIR] [ARGS ...]",
                             description=f"Run `python -m {module}` in the source checkout: "
                             f"{text}. Other arguments are the benchmark's.")
        p.add_argument("--checkout", type=Path, default=None, metavar="DIR",
                       help=f"the source checkout (default ${CHECKOUT_ENV}, the checkout this "
                            "package runs from, or the current directory)")
        p.set_defaults(func=run, forwards=True)
