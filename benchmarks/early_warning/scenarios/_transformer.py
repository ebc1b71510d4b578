"""A small pre-LN transformer on synthetic tokens: a fixed pool with conflicting labels (full
batch), and a streaming control (fresh batches every step).

Attention is written out with matmuls (no fused kernel), so the exact HVP (double backward) works
when a closure is passed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from benchmarks.early_warning.scenarios._base import Task, adam, init_seed, seeded

VOCAB = 8
SEQ = 8
WIDTH = 16
HEADS = 2


class Block(nn.Module):
    """Pre-LN block: causal-free self-attention and a GELU MLP, both residual."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, h: Tensor) -> Tensor:
        b, t, d = h.shape
        dh = d // self.heads
        q, k, v = (z.view(b, t, self.heads, dh).transpose(1, 2)
                   for z in self.qkv(self.ln1(h)).split(d, dim=-1))  # fmt: skip
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1)
        h = h + self.proj((att @ v).transpose(1, 2).reshape(b, t, d))
        out: Tensor = h + self.ff(self.ln2(h))
        return out


class TinyTransformer(nn.Module):
    """Token + learned position embeddings, `layers` blocks, a final LayerNorm and read-out."""

    def __init__(self, layers: int, seed: int, vocab: int = VOCAB, d: int = WIDTH,
                 seq: int = SEQ, heads: int = HEADS) -> None:  # fmt: skip
        super().__init__()
        with init_seed(seed):
            self.emb = nn.Embedding(vocab, d)
            self.pos = nn.Parameter(0.02 * torch.randn(seq, d))
            self.blocks = nn.Sequential(*(Block(d, heads) for _ in range(layers)))
            self.ln = nn.LayerNorm(d)
            self.out = nn.Linear(d, vocab)

    def forward(self, tok: Tensor) -> Tensor:
        out: Tensor = self.out(self.ln(self.blocks(self.emb(tok) + self.pos)))
        return out


def _ce(model: nn.Module, tok: Tensor, target: Tensor) -> Tensor:
    return nn.functional.cross_entropy(model(tok).reshape(-1, VOCAB), target.reshape(-1))


def _noisy(target: Tensor, rate: float, gen: torch.Generator) -> Tensor:
    """`target` with each label replaced by a uniformly random one with probability `rate`."""
    flip = torch.rand(target.shape, generator=gen) < rate
    return torch.where(flip, torch.randint(0, VOCAB, target.shape, generator=gen), target)


def transformer_pool(lr: float, seed: int, *, layers: int = 1, beta2: float = 0.99,
                     pool: int = 64, noise: float = 0.02, batch: int | None = None,
                     model: Callable[[], nn.Module] | None = None
                     ) -> Callable[[], Task]:  # fmt: skip
    """Reverse `pool` random 8-token sequences, cross-entropy, Adam(lr, β=(0.9, beta2)). Every
    sequence appears twice, each copy with its own 2 % label noise: where the copies disagree no
    model can be right on both, so the loss has a floor (~0.02–0.035 nats) instead of falling to
    float noise, and the rest is learned perfectly. Full batch, or with `batch` minibatches of
    the 2·pool rows reshuffled every epoch (ground truth then: the loss on the whole pool).
    `model` builds another network for the same task (default: a `TinyTransformer`)."""

    def build() -> Task:
        gen = seeded(seed)
        tok = torch.randint(0, VOCAB, (pool, SEQ), generator=gen).repeat(2, 1)
        target = _noisy(tok.flip(1), noise, gen)
        net = model() if model is not None else TinyTransformer(layers, seed)
        opt = adam(net, lr, betas=(0.9, beta2))
        if batch is None:
            return Task(net, opt, lambda: _ce(net, tok, target))
        shuffle = seeded(10_000 + seed)
        per_epoch = tok.shape[0] // batch
        order: list[Tensor] = []
        cur: list[Tensor] = []

        def select(t: int) -> None:
            if t % per_epoch == 0:
                order[:] = [torch.randperm(tok.shape[0], generator=shuffle)]
            idx = order[0][(t % per_epoch) * batch : (t % per_epoch + 1) * batch]
            cur[:] = [tok[idx], target[idx]]

        return Task(net, opt, lambda: _ce(net, cur[0], cur[1]), batch=select,
                    eval_loss=lambda: _ce(net, tok, target))  # fmt: skip

    return build


def transformer_stream(lr: float, seed: int, *, layers: int = 1, beta2: float = 0.99,
                       batch: int = 32, noise: float = 0.02) -> Callable[[], Task]:  # fmt: skip
    """The same reversal task with a fresh batch of `batch` random sequences every step, drawn
    from a stream seeded with `seed` (no fixed pool: nothing to memorise, the gradient noise
    keeps √v̂ up). Ground truth: the loss on a fixed held-out batch of 256 sequences."""

    def build() -> Task:
        gen = seeded(20_000 + seed)
        held = seeded(30_000 + seed)
        ev_tok = torch.randint(0, VOCAB, (256, SEQ), generator=held)
        ev_target = _noisy(ev_tok.flip(1), noise, held)
        cur: list[Tensor] = []

        def select(t: int) -> None:
            tok = torch.randint(0, VOCAB, (batch, SEQ), generator=gen)
            cur[:] = [tok, _noisy(tok.flip(1), noise, gen)]

        model = TinyTransformer(layers, seed)
        return Task(model, adam(model, lr, betas=(0.9, beta2)),
                    lambda: _ce(model, cur[0], cur[1]), batch=select,
                    eval_loss=lambda: _ce(model, ev_tok, ev_target))  # fmt: skip

    return build
