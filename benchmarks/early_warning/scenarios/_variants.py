"""Held-out variants of the suite's families, named like its scenarios.

`variant(name)` builds a scenario the suite does not hold from a name in the suite's grammar, so
the runner and the survey can train other seeds and learning rates of the same problems
(`--scenarios mlp-w1000-lr0.005-s5,tf-L1-lr0.03-s3`):

- `mlp-w{width}-lr{lr}-s{seed}`: the seed regression MLP, full batch;
- `cnn-lr{lr}-s{seed}`: the tanh CNN;
- `tf-L{layers}-lr{lr}-s{seed}`: the fixed-pool transformer, full batch;
- `lstm-lr{lr}-s{seed}`: the same task with a bidirectional LSTM (an architecture the suite does
  not hold);
- `mb-mlp-lr{lr}-s{seed}`: the seed MLP on minibatches of 32 (ground truth: the full-data loss);
- `mb-tf-pool-lr{lr}-s{seed}`: the fixed-pool transformer in batches of 32;
- `hp-mlp-lr{lr}-s{seed}-lr{new}` / `hp-mlp-lr{lr}-s{seed}-b1-{new}`: the seed MLP (w1000, full
  batch, 900 steps) with its lr or Adam's β1 (0.9) set to `new` before step 500.

Whether a variant spikes is not known before it trains, so none is marked a control: a variant
that never spikes shows its pages as false pages.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from benchmarks.early_warning.scenarios._base import Scenario, Task, at
from benchmarks.early_warning.scenarios._cnn import cnn
from benchmarks.early_warning.scenarios._mlp import mlp, mlp_minibatch
from benchmarks.early_warning.scenarios._rnn import lstm_pool
from benchmarks.early_warning.scenarios._transformer import transformer_pool

__all__ = ["variant"]

_LR = r"lr(?P<lr>\d+(?:\.\d+)?(?:e-?\d+)?)"
_SEED = r"s(?P<seed>\d+)"
_NUM = r"\d+(?:\.\d+)?(?:e-?\d+)?"
HP_CHANGE = 500  # the step a hp-mlp variant changes its hyper-parameter at
Make = Callable[[re.Match[str], float, int], Callable[[], Task]]
_GRAMMAR: tuple[tuple[str, str, int, Make], ...] = (
    (rf"mlp-w(?P<width>\d+)-{_LR}-{_SEED}", "regression-mlp", 1500,
     lambda m, lr, s: mlp(int(m["width"]), lr, s)),
    (rf"cnn-{_LR}-{_SEED}", "cnn", 1500, lambda m, lr, s: cnn(lr, s)),
    (rf"tf-L(?P<layers>\d)-{_LR}-{_SEED}", "transformer", 1500,
     lambda m, lr, s: transformer_pool(lr, s, layers=int(m["layers"]))),
    (rf"lstm-{_LR}-{_SEED}", "lstm", 1500, lambda m, lr, s: lstm_pool(lr, s)),
    (rf"mb-mlp-{_LR}-{_SEED}", "minibatch", 3000, lambda m, lr, s: mlp_minibatch(1000, lr, s)),
    (rf"mb-tf-pool-{_LR}-{_SEED}", "minibatch", 1500,
     lambda m, lr, s: transformer_pool(lr, s, batch=32)),
    (rf"hp-mlp-{_LR}-{_SEED}-lr(?P<new>{_NUM})", "hparam-jump", 900,
     lambda m, lr, s: mlp(1000, lr, s, schedule=at(HP_CHANGE, lr=float(m["new"])))),
    (rf"hp-mlp-{_LR}-{_SEED}-b1-(?P<new>{_NUM})", "hparam-jump", 900,
     lambda m, lr, s: mlp(1000, lr, s, schedule=at(HP_CHANGE, beta1=float(m["new"])))),
)


def variant(name: str) -> Scenario | None:
    """The scenario a name of the grammar describes (None if it describes none)."""
    for pattern, family, steps, make in _GRAMMAR:
        m = re.fullmatch(pattern, name)
        if m is not None:
            build = make(m, float(m["lr"]), int(m["seed"]))
            return Scenario(name, family, False, steps, build, family == "minibatch")
    return None
