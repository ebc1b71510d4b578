"""The Lightning callback and the Fabric helper on tiny real trainings (CPU, a few optimizer
steps), streaming through the real transport to the ZeroMQ test peer, which decodes every frame.

Each test computes the loss of every optimizer step on its own (from the micro-batch losses the
training step saw) and compares it with what was streamed."""

from __future__ import annotations

import itertools
import logging
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional

from spikewatch.protocol import names as nm
from spikewatch.protocol import wire
from tests.agent._delivered import by_step, hello
from tests.agent._peer import Peer

pl = pytest.importorskip("lightning.pytorch")
pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

STEPS = 6
ACCUMULATE = 2
OPTIONS: dict[str, Any] = {"profile": "full", "overhead_budget": math.inf}


@pytest.fixture(autouse=True)
def _quiet() -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)


def _classifier() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))


def _loader() -> torch.utils.data.DataLoader[Any]:
    torch.manual_seed(0)
    ds = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randint(0, 3, (64,)))
    return torch.utils.data.DataLoader(ds, batch_size=8)


def _trainer(callback: Any, tmp_path: Path, *, max_steps: int = STEPS, **kw: Any) -> Any:
    return pl.Trainer(max_steps=max_steps, accelerator="cpu", enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=str(tmp_path), callbacks=[callback], **kw)


def _of_run(peer: Peer, run: str, metric: str) -> dict[int, float]:
    return {r.step: r.scalars[metric] for m in peer.first_seen()
            if isinstance(m, wire.Batch) and m.header.run == run
            for r in m.records if metric in r.scalars}


def _step_means(seen: list[float], k: int) -> list[float]:
    return [sum(seen[i:i + k]) / k for i in range(0, len(seen), k)]


def _assert_predictive(series: Any) -> None:
    """The zero-extra-pass predictor ran: ρ and the two-secant stability ratio were streamed."""
    assert 0 in series(nm.RHO)
    assert sorted(series(nm.STABILITY_RATIO_TWO_SECANT)) == list(range(2, STEPS - 1))
    assert sorted(series(nm.GRAD_NORM)) == list(range(STEPS))  # the closure's gradients


def test_lightning_logs_the_undivided_loss_once_per_optimizer_step(peer: Peer,
                                                                   tmp_path: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger

    from spikewatch.integrations.lightning import SpikewatchCallback

    seen: list[float] = []

    class Tiny(pl.LightningModule):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.net = _classifier()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = functional.cross_entropy(self.net(x), y)
            seen.append(float(loss.detach()))
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=0.01)

    cb = SpikewatchCallback(endpoint=peer.endpoint, **OPTIONS)
    logger = CSVLogger(str(tmp_path), name="exp", version=3)
    _trainer(cb, tmp_path, logger=logger, accumulate_grad_batches=ACCUMULATE).fit(Tiny(), _loader())
    assert cb.monitor is None  # closed
    assert peer.wait_for(lambda: len(by_step(peer, nm.LOSS)) == STEPS)
    assert cb.run == hello(peer).header.run == "exp-version_3"  # the trainer's logger name/version
    assert hello(peer).meta["model_class"] == "Tiny"
    assert hello(peer).meta["closure"] is False
    assert cb.logits_module_names == ["net.2"]  # the last Linear: the classifier's logits
    assert len(seen) == ACCUMULATE * STEPS
    losses = by_step(peer, nm.LOSS)  # one loss per optimizer step: the mean of its micro-batches
    assert [losses[s] for s in range(STEPS)] == pytest.approx(_step_means(seen, ACCUMULATE),
                                                              rel=1e-6)
    _assert_predictive(lambda metric: by_step(peer, metric))
    assert 1 / 3 <= by_step(peer, nm.MAX_PROB)[0] < 1  # over-confidence of 3 classes


def test_lightning_watches_every_optimizer_under_manual_optimization(peer: Peer,
                                                                     tmp_path: Path) -> None:
    from spikewatch.integrations.lightning import SpikewatchCallback

    seen: list[float] = []

    class TwoOptimizers(pl.LightningModule):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.encoder = nn.Linear(4, 4)
            self.head = _classifier()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            enc_opt, head_opt = self.optimizers()
            head_loss = functional.cross_entropy(self.head(self.encoder(x).detach()), y)
            head_opt.zero_grad()
            self.manual_backward(head_loss)
            head_opt.step()
            enc_loss = functional.cross_entropy(self.head(self.encoder(x)), y)
            enc_opt.zero_grad()
            self.manual_backward(enc_loss)
            enc_opt.step()
            seen.append(float(enc_loss.detach()))
            return enc_loss.detach()

        def configure_optimizers(self) -> list[torch.optim.Optimizer]:
            return [torch.optim.AdamW(self.encoder.parameters(), lr=0.01),
                    torch.optim.Adam(self.head.parameters(), lr=0.01)]

    cb = SpikewatchCallback(endpoint=peer.endpoint, **OPTIONS)
    # Lightning's global step counts the steps of both optimizers
    _trainer(cb, tmp_path, logger=False, max_steps=2 * STEPS).fit(TwoOptimizers(), _loader())
    assert cb.run is not None
    assert cb.run.startswith("TwoOptimizers-")
    runs = [cb.run, f"{cb.run}.opt1"]
    assert peer.wait_for(lambda: all(len(_of_run(peer, r, nm.LOSS)) == STEPS for r in runs))
    hellos = {m.header.run: m for m in peer.first_seen() if isinstance(m, wire.Hello)}
    assert sorted(hellos) == sorted(runs)
    assert [hellos[r].meta["optimizer"] for r in runs] == ["AdamW", "Adam"]
    assert cb.logits_module_names == ["encoder", "head.2"]  # each optimizer's own output module
    for run in runs:  # the loss training_step returned, for each optimizer that stepped
        losses = _of_run(peer, run, nm.LOSS)
        assert [losses[s] for s in range(STEPS)] == pytest.approx(seen, rel=1e-6)
        _assert_predictive(lambda metric, run=run: _of_run(peer, run, metric))


def test_fabric_logs_the_step_loss_from_fabric_backward(peer: Peer, tmp_path: Path) -> None:
    from lightning.fabric import Fabric
    from lightning.fabric.loggers.csv_logs import CSVLogger

    from spikewatch.integrations.lightning import attach_fabric

    fabric = Fabric(accelerator="cpu", devices=1,
                    loggers=CSVLogger(str(tmp_path), name="fab", version="v1"))
    torch.manual_seed(0)
    net = _classifier()
    model, optimizer = fabric.setup(net, torch.optim.Adam(net.parameters(), lr=0.01))
    monitor = attach_fabric(fabric, model, optimizer, endpoint=peer.endpoint, **OPTIONS)
    batches = itertools.cycle(list(_loader()))
    seen: list[float] = []
    for _ in range(STEPS):
        for _ in range(ACCUMULATE):
            x, y = next(batches)
            loss = functional.cross_entropy(model(x), y)
            seen.append(float(loss.detach()))
            fabric.backward(loss / ACCUMULATE)  # the usual accumulation: the sum is the mean
        optimizer.step()
        optimizer.zero_grad()
    monitor.close()
    assert peer.wait_for(lambda: len(by_step(peer, nm.LOSS)) == STEPS)
    assert hello(peer).header.run == "fab-v1"  # the logger's name/version
    losses = by_step(peer, nm.LOSS)
    assert [losses[s] for s in range(STEPS)] == pytest.approx(_step_means(seen, ACCUMULATE),
                                                              rel=1e-6)
    _assert_predictive(lambda metric: by_step(peer, metric))
    assert 0 in by_step(peer, nm.MAX_PROB)  # from the last Linear, found without being named


def test_bad_options_fail_when_the_callback_is_built() -> None:
    from spikewatch.integrations.lightning import SpikewatchCallback

    with pytest.raises(ValueError, match="profile"):
        SpikewatchCallback(profile="nope")
    with pytest.raises(TypeError):
        SpikewatchCallback(not_an_option=1)
