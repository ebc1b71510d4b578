"""Gradient spike share against full SVD; k rule, warm start, non-finite and bad input."""

from __future__ import annotations

import math

import pytest
import torch

from spikewatch.monitor.spike_share import SpikeShare, spike_k


def _spiky(m: int, n: int, spikes: int, seed: int = 0) -> torch.Tensor:
    """Low-rank spike (σ 50, 40, ...) over a flat tail (σ ≤ 1): Spectra's spike-tail shape."""
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(m, m, generator=g))
    V, _ = torch.linalg.qr(torch.randn(n, n, generator=g))
    r = min(m, n)
    s = torch.linspace(1.0, 0.05, r)
    s[:spikes] = torch.linspace(50.0, 30.0, spikes)
    out: torch.Tensor = (U[:, :r] * s) @ V[:, :r].t()
    return out


def _exact_share(G: torch.Tensor, k: int) -> float:
    s = torch.linalg.svdvals(G.double())
    return float(s[:k].square().sum() / s.square().sum())


@pytest.mark.parametrize(("m", "n"), [(400, 200), (200, 400), (300, 300)])
def test_share_and_sigmas_match_full_svd(m: int, n: int) -> None:
    k = spike_k(m, n)
    assert k == round(0.015 * min(m, n))
    G = _spiky(m, n, spikes=k)
    res = SpikeShare(iters=8).update("w", G)
    assert res.k == k
    assert float(res.share) == pytest.approx(_exact_share(G, k), rel=1e-5)
    exact = torch.linalg.svdvals(G.double())[:k]
    assert torch.allclose(res.sigmas.double(), exact, rtol=1e-5)


def test_k_rule() -> None:
    assert spike_k(10, 10) == 1  # at least one direction
    assert spike_k(4096, 1024) == 15
    assert spike_k(1024, 4096) == 15
    assert spike_k(100, 200) == 2  # round(1.5) == 2


def test_warm_start_tracks_a_slowly_rotating_spectrum_with_few_iterations() -> None:
    G = _spiky(256, 128, spikes=2)
    gen = torch.Generator().manual_seed(9)
    warm = SpikeShare(iters=1)
    for _ in range(6):
        warm.update("w", G)
    noise = 0.01 * torch.randn(256, 128, generator=gen)
    G2 = G + noise
    k = spike_k(256, 128)
    warm_share = float(warm.update("w", G2).share)
    assert warm_share == pytest.approx(_exact_share(G2, k), rel=1e-4)
    cold = SpikeShare(iters=1, oversample=0)
    assert float(cold.update("w", G2).share) <= _exact_share(G2, k) + 1e-6  # Ky Fan bound


def test_flat_spectrum_share_is_about_k_over_r() -> None:
    g = torch.Generator().manual_seed(2)
    Q, _ = torch.linalg.qr(torch.randn(200, 200, generator=g))
    res = SpikeShare(iters=4).update("w", Q)  # all σ = 1
    assert float(res.share) == pytest.approx(spike_k(200, 200) / 200, rel=1e-4)


def test_zero_nonfinite_and_bad_input() -> None:
    ss = SpikeShare()
    assert float(ss.update("z", torch.zeros(20, 10)).share) == 0.0
    bad = torch.ones(20, 10)
    bad[3, 4] = math.inf
    res = ss.update("b", bad)
    assert math.isnan(float(res.share))
    assert torch.isnan(res.sigmas).all()
    ok = ss.update("b", _spiky(20, 10, 1))  # the NaN-free warm start recovers
    assert float(ok.share) == pytest.approx(_exact_share(_spiky(20, 10, 1), 1), rel=1e-5)
    with pytest.raises(ValueError, match="2-D"):
        ss.update("v", torch.ones(5))


def test_bf16_gradient() -> None:
    G = _spiky(64, 32, 1)
    res = SpikeShare(iters=6).update("w", G.bfloat16())
    assert res.share.dtype == torch.float32
    assert float(res.share) == pytest.approx(_exact_share(G.bfloat16().float(), 1), rel=1e-4)


def test_no_oversampling_path_without_rayleigh_ritz_matches_svd() -> None:
    G = _spiky(300, 150, spikes=2)
    k = spike_k(300, 150)
    res = SpikeShare(iters=30, oversample=0).update("w", G)
    assert float(res.share) == pytest.approx(_exact_share(G, k), rel=1e-5)
    exact = torch.linalg.svdvals(G.double())[:k]
    assert torch.allclose(res.sigmas.double(), exact, rtol=1e-3)


_HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy")


def _forbid_host_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every Python-level read of a tensor's value fail (each is a host sync on a GPU)."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("host read of a tensor value")

    for name in _HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, refuse)
    with pytest.raises(AssertionError, match="host read"):
        float(torch.ones(()))  # the guard is live


@pytest.mark.parametrize("oversample", [0, 4])
def test_no_host_reads(monkeypatch: pytest.MonkeyPatch, oversample: int) -> None:
    G = _spiky(60, 30, 1)
    ss = SpikeShare(oversample=oversample)
    _forbid_host_reads(monkeypatch)
    ss.update("w", G)
    res = ss.update("w", G)
    monkeypatch.undo()
    assert 0.0 < float(res.share) <= 1.0
