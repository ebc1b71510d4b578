"""The collector reads CPU values at once and copies every device value into buffers of its
own (tested on CPU with `read_cpu=False`), draining them in write order, whatever their dtype,
shape or number."""

from __future__ import annotations

import math

import torch

from spikewatch.agent._collect import _CHUNK, Collector


def test_recorded_values_are_copies_not_references() -> None:
    c = Collector(clock=lambda: 0.0, read_cpu=False)
    loss = torch.tensor(2.5, requires_grad=True) * 1.0
    c.scalar(0, "loss", loss)
    with torch.no_grad():
        loss.fill_(99.0)  # the training step reuses or frees its tensors: the record must not care
    (r,) = c.drain()
    assert r.scalars["loss"] == 2.5
    assert all(not buf.requires_grad for b in c._bufs.values() for buf in b.chunks)


def test_dtypes_shapes_and_write_order_across_chunks() -> None:
    c = Collector(clock=lambda: 0.0, read_cpu=False)
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
    c = Collector(clock=lambda: 0.0, read_cpu=False)
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


def test_cpu_values_are_read_at_once_and_kept_as_host_numbers() -> None:
    c = Collector(clock=lambda: 0.0)
    loss = torch.tensor(2.5, requires_grad=True) * 1.0
    c.scalar(0, "loss", loss)
    c.layer_vector(0, "rho", ["a", "b"], torch.tensor([1, 2], dtype=torch.int32))
    c.hist(0, "h", "a", torch.tensor([3, 0, 1]), -1.0, 1.0, torch.tensor(2))
    with torch.no_grad():
        loss.fill_(99.0)
    assert len(c) == 0
    assert not c._bufs
    (r,) = c.drain()
    assert r.scalars["loss"] == 2.5
    assert r.layers["rho"] == {"a": 1.0, "b": 2.0}
    assert r.hists["h"]["a"].counts == (3, 0, 1)
    assert r.hists["h"]["a"].nonfinite == 2


def test_full_counts_pending_steps_and_device_values() -> None:
    host = Collector(clock=lambda: 0.0, max_steps=3)
    for step in range(3):
        assert not host.full
        host.scalar(step, "loss", torch.tensor(1.0))  # read at once: only the steps pile up
    assert host.full
    dev = Collector(clock=lambda: 0.0, max_values=5, read_cpu=False)
    dev.hist(0, "h", "a", torch.zeros(4), -1.0, 1.0, torch.tensor(0))
    assert dev.full
    dev.drain()
    assert not dev.full
