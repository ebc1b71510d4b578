"""Spectral alignment against full SVD, histogram/NaN counting, flip invariance, sampling."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from spikewatch.monitor.spectral_alignment import (
    SpectralAlignment,
    declared_linear_weight,
    sample_rows,
)


def _gapped(out: int, inp: int, seed: int = 0) -> torch.Tensor:
    """A matrix with a clear gap between σ₁ and σ₂ (so power iteration converges fast)."""
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(out, out, generator=g))
    V, _ = torch.linalg.qr(torch.randn(inp, inp, generator=g))
    r = min(out, inp)
    s = torch.linspace(1.0, 0.1, r)
    s[0] = 3.0
    W: torch.Tensor = (U[:, :r] * s) @ V[:, :r].t()
    return W


def _reference(W: torch.Tensor, x: torch.Tensor, v_sign: torch.Tensor) -> torch.Tensor:
    v = torch.linalg.svd(W.double()).Vh[0]
    v = v * torch.sign(v @ v_sign.double())  # align the arbitrary SVD sign with ours
    rows = x.reshape(-1, x.shape[-1]).double()
    out: torch.Tensor = (rows @ v) / rows.norm(dim=1)
    return out


def test_v1_and_cosines_match_full_svd() -> None:
    W = _gapped(48, 32)
    x = torch.randn(5, 7, 32, generator=torch.Generator().manual_seed(1))
    sa = SpectralAlignment(bins=10, iters=40)
    res = sa.update(W, x)
    assert sa.v1 is not None
    vh0 = torch.linalg.svd(W.double()).Vh[0]
    assert abs(float(sa.v1.double() @ vh0)) == pytest.approx(1.0, abs=1e-6)
    assert float(res.sigma1) == pytest.approx(3.0, rel=1e-5)
    cos = _reference(W, x, sa.v1)
    assert float(res.mean) == pytest.approx(float(cos.mean()), abs=1e-6)
    p_pos = float((cos > 0).double().mean())
    p_neg = float((cos < 0).double().mean())
    assert float(res.sign_diversity) == pytest.approx(1 - abs(p_pos - p_neg), abs=1e-6)
    expected = torch.histc(cos, bins=10, min=-1.0, max=1.0).long()
    assert torch.equal(res.hist, expected)
    assert int(res.nonfinite) == 0
    assert res.rows == 35


def test_warm_start_converges_in_few_iterations_after_small_change() -> None:
    W = _gapped(64, 40)
    sa = SpectralAlignment(iters=50)
    sa.update(W, torch.randn(4, 40))
    W2 = W + 1e-3 * torch.randn(64, 40, generator=torch.Generator().manual_seed(3))
    sa.iters = 2
    sa.update(W2, torch.randn(4, 40))
    assert sa.v1 is not None
    vh0 = torch.linalg.svd(W2.double()).Vh[0]
    assert abs(float(sa.v1.double() @ vh0)) == pytest.approx(1.0, abs=1e-6)
    cold = SpectralAlignment(iters=2)
    cold.update(W2, torch.randn(4, 40))
    assert cold.v1 is not None
    assert abs(float(cold.v1.double() @ vh0)) < abs(float(sa.v1.double() @ vh0))


def test_histogram_bins_edges_and_nonfinite_rows_counted_separately() -> None:
    W = torch.zeros(3, 4)
    W[0, 0] = 2.0  # v₁ = ±e₀
    W[1, 1] = 1.0
    sa = SpectralAlignment(bins=4, iters=80)
    x = torch.tensor(
        [
            [1.0, 0.0, 0.0, 0.0],  # cos ±1   -> an end bin
            [-1.0, 0.0, 0.0, 0.0],  # cos ∓1  -> the other end bin
            [1.0, 1.0, 0.0, 0.0],  # cos ±0.707
            [0.0, 1.0, 0.0, 0.0],  # cos 0 -> bin 2 ([0, 0.5)), neither sign
            [math.nan, 0.0, 0.0, 0.0],
            [math.inf, 1.0, 0.0, 0.0],
        ]
    )
    res = sa.update(W, x)
    assert sa.v1 is not None
    s = float(sa.v1[0])
    assert s == pytest.approx(1.0)  # a cold start's largest entry is made positive
    assert int(res.nonfinite) == 2
    assert res.hist.tolist() == [1, 0, 1, 2]  # -1 | [-.5, 0) | 0 | 0.707 and +1
    # signs: finite rows are +1, -1, ±0.707, 0 -> p₊ = 2/4, p₋ = 1/4 (or mirrored)
    assert float(res.sign_diversity) == pytest.approx(1 - 0.25)
    assert float(res.mean) == pytest.approx(s * math.sqrt(0.5) / 4, abs=1e-6)


def test_sign_diversity_is_flip_invariant_mean_flips() -> None:
    W = _gapped(16, 12, seed=5)
    x = torch.randn(200, 12, generator=torch.Generator().manual_seed(6)) + 0.3 * torch.linalg.svd(
        W
    ).Vh[0]
    a = SpectralAlignment(iters=30)
    ra = a.update(W, x)
    assert a.v1 is not None
    b = SpectralAlignment(iters=30)
    b.v1 = -a.v1  # the tracker keeps the orientation it is warm-started from
    rb = b.update(W, x)
    assert float(rb.sign_diversity) == pytest.approx(float(ra.sign_diversity), abs=1e-7)
    assert float(rb.mean) == pytest.approx(-float(ra.mean), abs=1e-6)
    assert torch.equal(rb.hist, ra.hist.flip(0))


def test_collapse_gives_zero_diversity() -> None:
    W = _gapped(16, 12, seed=7)
    v = torch.linalg.svd(W).Vh[0]
    x = v + 0.01 * torch.randn(100, 12, generator=torch.Generator().manual_seed(8))
    res = SpectralAlignment(iters=30).update(W, x)
    assert float(res.sign_diversity) == 0.0
    assert abs(float(res.mean)) > 0.99


def test_rows_sampled_to_bound_deterministically() -> None:
    x = torch.arange(10_000 * 3, dtype=torch.float32).reshape(10, 1000, 3)
    a = sample_rows(x, 4096)
    assert a.shape == (4096, 3)
    assert torch.equal(a, sample_rows(x, 4096))
    assert float(a[0, 0]) == 0.0
    assert sample_rows(x[:1], 4096).shape == (1000, 3)
    res = SpectralAlignment(max_rows=64).update(torch.randn(5, 3), x)
    assert res.rows == 64
    assert int(res.hist.sum() + res.nonfinite) == 64


def test_declared_linear_and_bad_input() -> None:
    lin = nn.Linear(6, 4)
    assert declared_linear_weight(lin) is lin.weight
    with pytest.raises(ValueError, match="no 2-D"):
        declared_linear_weight(nn.Conv1d(2, 2, 3))
    sa = SpectralAlignment()
    with pytest.raises(ValueError, match="in-features"):
        sa.update(lin.weight, torch.randn(3, 5))
    with pytest.raises(ValueError, match="out×in"):
        sa.update(torch.randn(2, 3, 4), torch.randn(3, 4))


def test_nonfinite_weight_recovers_on_next_call() -> None:
    W = _gapped(8, 6)
    sa = SpectralAlignment(iters=30)
    bad = W.clone()
    bad[0, 0] = math.nan
    res = sa.update(bad, torch.randn(10, 6))
    assert int(res.nonfinite) == 10
    assert math.isnan(float(res.mean))
    sa.update(W, torch.randn(10, 6))
    assert sa.v1 is not None
    assert abs(float(sa.v1.double() @ torch.linalg.svd(W.double()).Vh[0])) == pytest.approx(
        1.0, abs=1e-6
    )


def test_low_precision_inputs() -> None:
    W = _gapped(16, 8).bfloat16()
    x = torch.randn(32, 8).half()
    res = SpectralAlignment(iters=20).update(W, x)
    assert res.mean.dtype == torch.float32
    assert int(res.hist.sum()) == 32


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
    W, x = _gapped(20, 10), torch.randn(50, 10)
    sa = SpectralAlignment()
    _forbid_host_reads(monkeypatch)
    sa.update(W, x)  # cold start
    res = sa.update(W, x)  # warm start
    monkeypatch.undo()
    assert int(res.hist.sum()) == 50
