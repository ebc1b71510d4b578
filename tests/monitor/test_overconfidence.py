"""Over-confidence proxies against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from spikewatch.monitor.overconfidence import overconfidence


def test_hand_computed_two_rows() -> None:
    # row 0: uniform over 4 classes; row 1: logits (ln 3, 0, -inf, -inf) -> p = (3/4, 1/4, 0, 0)
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [math.log(3.0), 0.0, -math.inf, -math.inf]])
    res = overconfidence(logits)
    ent0, ent1 = math.log(4.0), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert float(res.max_prob) == pytest.approx((0.25 + 0.75) / 2, abs=1e-6)
    assert float(res.entropy) == pytest.approx((ent0 + ent1) / 2, abs=1e-6)
    imp0, imp1 = 1 - 4 * 0.0625, 1 - (0.5625 + 0.0625)
    assert float(res.impurity) == pytest.approx((imp0 + imp1) / 2, abs=1e-6)
    assert float(res.logit_norm) == pytest.approx((0.0 + math.log(3.0)) / 2, abs=1e-6)
    assert int(res.counted) == 2
    assert int(res.nonfinite) == 0


def test_leading_dims_and_matches_float64_reference() -> None:
    z = torch.randn(3, 5, 11, generator=torch.Generator().manual_seed(0)) * 4
    res = overconfidence(z)
    p = torch.softmax(z.double(), -1)
    assert float(res.max_prob) == pytest.approx(float(p.amax(-1).mean()), abs=1e-6)
    assert float(res.entropy) == pytest.approx(float(-(p * p.log()).sum(-1).mean()), abs=1e-5)
    assert float(res.impurity) == pytest.approx(float((1 - p.square().sum(-1)).mean()), abs=1e-6)
    assert float(res.logit_norm) == pytest.approx(float(z.double().norm(dim=-1).mean()), rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_large_logits_are_safe(dtype: torch.dtype) -> None:
    z = torch.tensor([[60000.0, 0.0, -60000.0]] * 4).to(dtype)  # exp() overflows in fp16
    res = overconfidence(z)
    assert float(res.max_prob) == pytest.approx(1.0)
    assert float(res.entropy) == pytest.approx(0.0, abs=1e-6)
    assert math.isfinite(float(res.logit_norm))


def test_mask_and_nonfinite_rows() -> None:
    z = torch.tensor([[0.0, 0.0], [10.0, 0.0], [math.nan, 0.0], [math.inf, 1.0]])
    res = overconfidence(z, mask=torch.tensor([True, False, True, True]))
    assert int(res.counted) == 1
    assert int(res.nonfinite) == 2
    assert float(res.max_prob) == pytest.approx(0.5)
    none = overconfidence(z[2:])
    assert math.isnan(float(none.entropy))
    with pytest.raises(ValueError, match="mask shape"):
        overconfidence(z, mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="class dimension"):
        overconfidence(torch.zeros(3, 0))


_HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy")


def _forbid_host_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every Python-level read of a tensor's value fail (each is a host sync on a GPU)."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("host read of a tensor value")

    for name in _HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, refuse)
    with pytest.raises(AssertionError, match="host read"):
        float(torch.ones(()))  # the guard is live


def test_no_host_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    z = torch.randn(4, 5, 7)
    _forbid_host_reads(monkeypatch)
    res = overconfidence(z, mask=torch.ones(4, 5, dtype=torch.bool))
    monkeypatch.undo()
    assert int(res.counted) == 20
