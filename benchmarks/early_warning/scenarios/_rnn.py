"""A small bidirectional LSTM on the transformers' reversal task (a fixed pool with conflicting
labels, full batch): an architecture the rules were not tuned on, for held-out checks
(`lstm-lr{lr}-s{seed}`, `scenarios._variants`).

A recurrent network's curvature lives in its gates and its recurrent weights, not in attention or
LayerNorm; the reversal needs both directions, so the model reads the sequence both ways.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from benchmarks.early_warning.scenarios._base import Task, init_seed
from benchmarks.early_warning.scenarios._transformer import SEQ, VOCAB, WIDTH, transformer_pool


class TinyLSTM(nn.Module):
    """Token embedding, one bidirectional LSTM layer, a per-position read-out."""

    def __init__(self, seed: int, vocab: int = VOCAB, d: int = WIDTH, seq: int = SEQ) -> None:
        super().__init__()
        with init_seed(seed):
            self.emb = nn.Embedding(vocab, d)
            self.rnn = nn.LSTM(d, d, batch_first=True, bidirectional=True)
            self.out = nn.Linear(2 * d * seq, vocab * seq)
        self.vocab, self.seq = vocab, seq

    def forward(self, tok: Tensor) -> Tensor:
        h, _ = self.rnn(self.emb(tok))
        out: Tensor = self.out(h.reshape(h.shape[0], -1)).view(-1, self.seq, self.vocab)
        return out


def lstm_pool(lr: float, seed: int, *, beta2: float = 0.99) -> Callable[[], Task]:
    """The fixed-pool reversal of `transformer_pool`, full batch, with a `TinyLSTM`."""
    return transformer_pool(lr, seed, beta2=beta2, model=lambda: TinyLSTM(seed))
