"""Lightning and Hugging Face integrations on tiny models built from config (no downloads), with
the real transport and the ZeroMQ test peer."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from spikewatch.protocol import names as nm
from spikewatch.protocol import wire
from tests.agent._peer import Peer

STEPS = 6


def _records(peer: Peer) -> list[wire.Record]:
    return [r for m in peer.first_seen() if isinstance(m, wire.Batch) for r in m.records]


def _hello(peer: Peer) -> wire.Hello:
    hellos = [m for m in peer.first_seen() if isinstance(m, wire.Hello)]
    assert len(hellos) == 1
    return hellos[0]


def _series(peer: Peer, metric: str) -> dict[int, float]:
    return {r.step: r.scalars[metric] for r in _records(peer) if metric in r.scalars}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_lightning_callback(peer: Peer, tmp_path: Path) -> None:
    pl = pytest.importorskip("lightning.pytorch")
    from spikewatch.agent.integrations.lightning import SpikewatchCallback

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    seen: list[float] = []

    class Tiny(pl.LightningModule):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = nn.functional.mse_loss(self.net(x), y)
            seen.append(float(loss.detach()))
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=0.01)

    torch.manual_seed(0)
    ds = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    loader = torch.utils.data.DataLoader(ds, batch_size=8)
    cb = SpikewatchCallback(run="lightning-run", endpoint=peer.endpoint, profile="full",
                            overhead_budget=math.inf)
    trainer = pl.Trainer(max_steps=STEPS, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(tmp_path),
                         callbacks=[cb])
    trainer.fit(Tiny(), loader)
    assert cb.monitor is None  # closed
    assert peer.wait_for(lambda: len(_series(peer, nm.LOSS)) == STEPS)
    hello = _hello(peer)
    assert hello.header.run == "lightning-run"
    assert hello.meta["optimizer"] == "Adam"
    assert hello.meta["model_class"] == "Tiny"
    losses = _series(peer, nm.LOSS)
    assert [losses[s] for s in range(STEPS)] == pytest.approx(seen, rel=1e-6)
    # Lightning steps with a closure: the pre-step probes saw this step's gradients
    assert sorted(_series(peer, nm.GRAD_NORM)) == list(range(STEPS))
    assert all(v > 0 for v in _series(peer, nm.GRAD_NORM).values())
    assert 0 in _series(peer, nm.RHO)
    assert sorted(_series(peer, nm.STABILITY_RATIO_TWO_SECANT)) == list(range(2, STEPS - 1))


@pytest.fixture
def trainer_cb(peer: Peer) -> Any:
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from spikewatch.agent.integrations.huggingface import SpikewatchCallback

    return SpikewatchCallback(run="hf-run", endpoint=peer.endpoint, profile="full",
                              overhead_budget=math.inf)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_huggingface_trainer_callback(peer: Peer, trainer_cb: Any, tmp_path: Path) -> None:
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=16,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(config)
    g = torch.Generator().manual_seed(1)
    data = [{"input_ids": ids, "labels": ids}
            for ids in torch.randint(0, 64, (32, 16), generator=g)]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=STEPS,
                             per_device_train_batch_size=4, learning_rate=1e-3,
                             logging_steps=1000, save_strategy="no", report_to=[],
                             use_cpu=True, disable_tqdm=True, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[trainer_cb])
    trainer.train()
    assert trainer_cb.monitor is None
    assert peer.wait_for(lambda: len(_series(peer, nm.LOSS)) == STEPS)
    hello = _hello(peer)
    assert hello.header.run == "hf-run"
    assert hello.meta["model_class"] == "GPT2LMHeadModel"
    assert hello.meta["optimizer"] == "AdamW"
    assert hello.meta["model_parameters"] == sum(p.numel() for p in model.parameters())
    losses = _series(peer, nm.LOSS)
    assert sorted(losses) == list(range(STEPS))
    assert 3.0 < losses[0] < 5.5  # ≈ ln(64) for a fresh model
    assert sorted(_series(peer, nm.GRAD_NORM)) == list(range(STEPS))
    assert 0 in _series(peer, nm.RHO)
    assert 0 < _series(peer, nm.MAX_PROB)[0] < 1  # over-confidence from outputs.logits
    first = next(r for r in _records(peer) if r.step == 0)
    assert "lm_head" in first.layers[nm.SA_MEAN]  # GPT-2's nn.Linear head
