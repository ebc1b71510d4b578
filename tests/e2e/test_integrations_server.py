"""The Lightning and Hugging Face callbacks with nothing but an endpoint (attach defaults: no
closure, default profile and 1 % budget) stream into a real server (the daemon as a subprocess,
SQLite store): the run is stored under the trainer's name, the loss of every optimizer step is
the trainer's own, and the predictor's stability ratio and ρ arrive."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from spikewatch.protocol import names as nm
from tests.e2e._procs import Daemon, Procs, start_daemon
from tests.e2e._train import series, wait_stored

pytestmark = [pytest.mark.e2e, pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]
STEPS = 40


@pytest.fixture(scope="module")
def daemon(procs: Procs, tmp_path_factory: pytest.TempPathFactory) -> Daemon:
    work = tmp_path_factory.mktemp("integrations")
    return start_daemon(procs, work, f"sqlite:///{work / 'sw.db'}")


def _series(daemon: Daemon, run: str, metric: str) -> dict[int, float]:
    return {k: v for k, v in series(daemon.http, run, metric).items()
            if isinstance(v, float) and math.isfinite(v)}


def _assert_predicted(daemon: Daemon, run: str) -> None:
    for metric in (nm.STABILITY_RATIO_TWO_SECANT, nm.RHO_SAMPLED):
        assert _series(daemon, run, metric), f"no {metric} stored for {run}"


def test_lightning_run_is_stored_under_the_loggers_name(daemon: Daemon, tmp_path: Path) -> None:
    pl = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.loggers import CSVLogger

    from spikewatch.integrations.lightning import SpikewatchCallback

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    losses: list[float] = []

    class Module(pl.LightningModule):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))

        def training_step(self, batch: Any, _: int) -> torch.Tensor:
            x, y = batch
            loss = nn.functional.cross_entropy(self.net(x), y)
            losses.append(float(loss.detach()))
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=0.01)

    torch.manual_seed(0)
    ds = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randint(0, 3, (64,)))
    trainer = pl.Trainer(max_steps=STEPS, accelerator="cpu", enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         logger=CSVLogger(str(tmp_path), name="e2e", version=7),
                         callbacks=[SpikewatchCallback(endpoint=daemon.zmq)])
    trainer.fit(Module(), torch.utils.data.DataLoader(ds, batch_size=16))
    run = "e2e-version_7"
    wait_stored(daemon.http, run, STEPS - 1)
    stored = _series(daemon, run, nm.LOSS)
    assert sorted(stored) == list(range(STEPS))
    assert [stored[s] for s in range(STEPS)] == pytest.approx(losses, rel=1e-6)
    _assert_predicted(daemon, run)


def test_huggingface_run_is_stored_under_the_run_name(daemon: Daemon, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    from spikewatch.integrations.huggingface import SpikewatchCallback

    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64,
                                       n_positions=16))
    g = torch.Generator().manual_seed(1)
    data = [{"input_ids": ids, "labels": ids}
            for ids in torch.randint(0, 64, (STEPS * 4, 16), generator=g)]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=STEPS, run_name="hf-e2e",
                             per_device_train_batch_size=4, learning_rate=1e-3,
                             logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                             disable_tqdm=True, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=data,
                      callbacks=[SpikewatchCallback(endpoint=daemon.zmq)])
    trainer.train()
    wait_stored(daemon.http, "hf-e2e", STEPS - 1)
    stored = _series(daemon, "hf-e2e", nm.LOSS)
    logged = {int(h["step"]) - 1: float(h["loss"]) for h in trainer.state.log_history
              if "loss" in h}
    assert len(stored) == STEPS
    # the Trainer's log rounds its loss; what the server holds is the step's own float
    for step, loss in logged.items():
        assert stored[step] == pytest.approx(loss, rel=1e-3, abs=1e-4), step
    _assert_predicted(daemon, "hf-e2e")
