"""The small transformer language model the cost benchmarks time (0.65 M parameters)."""

from __future__ import annotations

from torch import Tensor, nn

VOCAB, D_MODEL, LAYERS, HEADS, FF, BATCH, SEQ = 1000, 128, 2, 4, 512, 16, 64


class TinyLM(nn.Module):
    """Token embedding + 2-layer nn.TransformerEncoder (d_model 128, 4 heads, ff 512) + LM head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D_MODEL)
        layer = nn.TransformerEncoderLayer(D_MODEL, HEADS, FF, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
        self.head = nn.Linear(D_MODEL, VOCAB)

    def forward(self, tokens: Tensor) -> Tensor:
        out: Tensor = self.head(self.encoder(self.embed(tokens)))
        return out
