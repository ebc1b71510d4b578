"""The Hugging Face `TrainerCallback` on a tiny GPT-2 built from config (no downloads), trained a
few optimizer steps on the CPU by a real `transformers.Trainer`, streaming through the real
transport to the ZeroMQ test peer, which decodes every frame. The Lightning callback and the
Fabric helper are tested in test_integrations_lightning.py."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional

from spikewatch.protocol import names as nm
from tests.agent._delivered import by_step, hello, records
from tests.agent._peer import Peer

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

STEPS = 6
VOCAB = 64


def _train(peer: Peer, tmp_path: Path, **args: Any) -> tuple[Any, Any, list[float]]:
    """Train a fresh tiny GPT-2 for STEPS optimizer steps with the callback; returns the
    callback, the trainer and each training micro-batch's loss computed here from the logits:
    the next-token cross-entropy (with the run's label smoothing) summed and divided, as the
    Trainer's `num_items_in_batch` does, by the number of labels."""
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    from spikewatch.integrations.huggingface import SpikewatchCallback

    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=VOCAB,
                                       n_positions=16, resid_pdrop=0.0, embd_pdrop=0.0,
                                       attn_pdrop=0.0))
    g = torch.Generator().manual_seed(1)
    data = [{"input_ids": ids, "labels": ids}
            for ids in torch.randint(0, VOCAB, (64, 16), generator=g)]
    smoothing = float(args.get("label_smoothing_factor", 0.0))
    seen: list[float] = []

    def independent_loss(module: nn.Module, inputs: Any, kwargs: Any, output: Any) -> None:
        if module.training:  # labels equal the inputs; the Trainer may have popped them
            logits, ids = output.logits.detach(), kwargs["input_ids"]
            total = functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB),
                                             ids[:, 1:].reshape(-1), label_smoothing=smoothing,
                                             reduction="sum")
            seen.append(float(total / ids.numel()))

    model.register_forward_hook(independent_loss, with_kwargs=True)
    cb = SpikewatchCallback(endpoint=peer.endpoint, profile="full", overhead_budget=math.inf)
    targs = TrainingArguments(output_dir=str(tmp_path), max_steps=STEPS,
                              per_device_train_batch_size=4, learning_rate=1e-3,
                              save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
                              dataloader_num_workers=0, **args)
    trainer = Trainer(model=model, args=targs, train_dataset=data, callbacks=[cb])
    trainer.train()
    assert cb.monitor is None  # closed
    assert "training_step" not in vars(trainer)  # the Trainer is left as it was
    assert peer.wait_for(lambda: len(by_step(peer, nm.LOSS)) == STEPS)
    return cb, trainer, seen


def _assert_streamed(peer: Peer, cb: Any, model_parameters: int) -> None:
    meta = hello(peer).meta
    assert meta["model_class"] == "GPT2LMHeadModel"
    assert meta["optimizer"] == "AdamW"
    assert meta["model_parameters"] == model_parameters
    assert meta["closure"] is False
    assert 0 in by_step(peer, nm.RHO)
    assert sorted(by_step(peer, nm.STABILITY_RATIO_TWO_SECANT)) == list(range(2, STEPS - 1))
    assert cb.logits_module_name == "lm_head"  # GPT-2's output module
    assert 0 < by_step(peer, nm.MAX_PROB)[0] < 1  # over-confidence of the lm_head's logits
    first = next(r for r in records(peer) if r.step == 0)
    assert "lm_head" in first.layers[nm.SA_MEAN]


def test_huggingface_logs_the_trainers_loss_per_optimizer_step(peer: Peer,
                                                               tmp_path: Path) -> None:
    cb, trainer, seen = _train(peer, tmp_path, run_name="hf-exp/1", logging_steps=1)
    assert cb.run == hello(peer).header.run == "hf-exp-1"  # args.run_name, made a valid name
    losses = by_step(peer, nm.LOSS)
    assert [losses[s] for s in range(STEPS)] == pytest.approx(seen, rel=1e-5)
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert [losses[s] for s in range(STEPS)] == pytest.approx(logged, rel=1e-5)  # the Trainer's
    assert 3.0 < losses[0] < 5.5  # ≈ ln(64) for a fresh model
    _assert_streamed(peer, cb, sum(p.numel() for p in trainer.model.parameters()))


def test_huggingface_label_smoothing_and_gradient_accumulation(peer: Peer,
                                                               tmp_path: Path) -> None:
    # with a label smoother the model returns no loss (outputs.loss is None): the Trainer does
    cb, trainer, seen = _train(peer, tmp_path, gradient_accumulation_steps=2,
                               label_smoothing_factor=0.1, logging_steps=1000)
    assert cb.run == hello(peer).header.run
    assert cb.run.startswith("GPT2LMHeadModel-")
    assert len(seen) == 2 * STEPS
    losses = by_step(peer, nm.LOSS)  # one loss per optimizer step: the mean of its micro-batches
    assert [losses[s] for s in range(STEPS)] == pytest.approx(
        [(seen[i] + seen[i + 1]) / 2 for i in range(0, len(seen), 2)], rel=1e-5)
    _assert_streamed(peer, cb, sum(p.numel() for p in trainer.model.parameters()))
