"""The collector copies every recorded device value into buffers of its own and drains them in
write order, whatever their dtype, shape or number."""

from __future__ import annotations

import math

import torch

from agent._collect import _CHUNK, Collector


def test_recorded_values_are_copies_not_references() -> None:
    c = Collector(clock=lambda: 0.0)
    loss = torch.tensor(2.5, requires_grad=True) * 1.0
    c.scalar(0, "loss", loss)
    with torch.no_grad():
        loss.fill_(99.0)  # the training step reuses or frees its tensors: the record must not care
    (r,) = c.drain()
    assert r.scalars["loss"] == 2.5
    assert all(not buf.requires_grad for b in c._bufs.values() for buf in b.chunks)


def test_dtypes_shapes_and_write_order_across_chunks() -> None:
    c = Collector(clock=lambda: 0.0)
    big = torch.arange(_CHUNK + 10, dtype=torch.int64)  # larger than a chunk: a chunk of its own
    c.scalar(0, "a", torch.tensor(1.5, dtype=torch.bfloat16))
    c.hist(0, "h", "layer", big, -1.0, 1.0, torch.tensor(3))
    c.scalar(0, "b", torch.tensor(True))
    for i in range(_CHUNK):  # fills the first chunk past its end
        c.layer(1, "l", f"x{i}", torch.tensor(float(i)))
    c.scalar(1, "f", 0.25)  # host floats never touch the buffers
    assert len(c) == 1 + big.numel() + 1 + 1 + _CHUNK
    r0, r1 = c.drain()
    assert r0.scalars == {"a": 1.5, "b": 1.0}
    assert r0.hists["h"]["layer"].counts == tuple(range(_CHUNK + 10))
    assert r0.hists["h"]["layer"].nonfinite == 3
    assert r1.layers["l"] == {f"x{i}": float(i) for i in range(_CHUNK)}
    assert r1.scalars["f"] == 0.25
    assert len(c) == 0


def test_partial_drain_keeps_later_steps_and_buffers_are_reused() -> None:
    c = Collector(clock=lambda: 0.0)
    c.scalar(0, "loss", torch.tensor(1.0))
    c.scalar(1, "loss", torch.tensor(float("nan")))
    (r0,) = c.drain(upto=0)
    assert r0.scalars["loss"] == 1.0
    chunks = [id(t) for b in c._bufs.values() for t in b.chunks]
    c.scalar(2, "loss", torch.tensor(3.0))
    r1, r2 = c.drain()
    assert math.isnan(r1.scalars["loss"])  # read at the first drain, kept on the host
    assert r2.scalars["loss"] == 3.0
    assert [id(t) for b in c._bufs.values() for t in b.chunks] == chunks  # no new allocation
