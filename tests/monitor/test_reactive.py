"""Reactive presets on constructed traces."""

from __future__ import annotations

import math

import pytest

from spikewatch.monitor.reactive import Kind, Preset, ReactiveDetector, Rule, detect


def _noisy(n: int, base: float = 2.0, amp: float = 0.05) -> list[float]:
    return [base + amp * math.sin(0.7 * i) for i in range(n)]


def test_megatron_uses_max_of_first_100_steps() -> None:
    trace = _noisy(150)
    trace[20] = 5.0  # a warm-up bump raises the reference max to 5
    trace[120] = 49.0  # < 10 × 5: silent
    trace[130] = 50.0  # = 10 × 5: fires
    hits = detect(list(enumerate(trace)), Preset.MEGATRON)
    assert [(d.step, d.kind) for d in hits] == [(130, Kind.SPIKE)]
    assert hits[0].threshold == pytest.approx(50.0)


def test_megatron_silent_during_first_100_steps() -> None:
    trace = _noisy(100)
    trace[50] = 1000.0
    assert detect(list(enumerate(trace)), "megatron") == []


def test_llm_foundry_needs_more_than_four_consecutive_outliers() -> None:
    trace = _noisy(60)
    trace += [4.5] * 4 + _noisy(10)  # 4 outliers in a row: silent
    trace += [4.5] * 5  # 5 in a row: fires on the 5th
    hits = detect(list(enumerate(trace)), Preset.LLM_FOUNDRY)
    assert [d.step for d in hits] == [len(trace) - 1]
    assert hits[0].threshold == pytest.approx(4.0, rel=0.05)  # 2 × running mean ≈ 2 × 2


def test_llm_foundry_outliers_do_not_inflate_the_running_mean() -> None:
    trace = _noisy(30) + [5.0] * 20
    hits = detect(list(enumerate(trace)), Preset.LLM_FOUNDRY)
    assert len(hits) == 16  # steps 34..49: the baseline stays ≈ 2
    assert all(h.threshold < 4.2 for h in hits)


def test_olmo_core_six_sigma_over_128_steps() -> None:
    trace = _noisy(128)  # σ ≈ 0.035
    mean = sum(trace) / 128
    std = math.sqrt(sum((x - mean) ** 2 for x in trace) / 128)
    silent = detect(list(enumerate([*trace, mean + 5.5 * std])), Preset.OLMO_CORE)
    assert silent == []
    hits = detect(list(enumerate([*trace, mean + 6.5 * std])), Preset.OLMO_CORE)
    assert [d.step for d in hits] == [128]
    assert hits[0].threshold == pytest.approx(mean + 6 * std, rel=1e-9)


def test_olmo_core_needs_full_window_and_flat_series_is_quiet() -> None:
    assert detect([(i, 1.0 if i < 100 else 100.0) for i in range(101)], Preset.OLMO_CORE) == []
    flat = [(i, 3.0) for i in range(200)] + [(200, 3.0 + 1e-9)]
    assert detect(flat, Preset.OLMO_CORE) == []


@pytest.mark.parametrize("preset", list(Preset))
def test_nonfinite_reported_never_crashes_and_not_counted(preset: Preset) -> None:
    det = ReactiveDetector(preset)
    out = []
    for i, x in enumerate(_noisy(200)):
        out.append(det.update(i, x))
        if i in (10, 150):
            out.append(det.update(i, math.nan))
            out.append(det.update(i, -math.inf))
    nonfinite = [d for d in out if d is not None and d.kind == Kind.NONFINITE]
    assert len(nonfinite) == 4
    assert all(d is None or d.kind == Kind.NONFINITE for d in out)


def test_accepts_numeric_like_and_rejects_garbage() -> None:
    import torch

    det = ReactiveDetector("olmo_core")
    assert det.update(0, torch.tensor(1.5)) is None
    with pytest.raises(TypeError, match="not a number"):
        det.update(1, "loss")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown preset"):
        ReactiveDetector("wandb")


def test_custom_rule() -> None:
    rule = Rule("tight", "zscore", factor=3.0, window=10)
    trace = [1.0, 1.1] * 5 + [1.5]
    assert [d.step for d in detect(list(enumerate(trace)), rule)] == [10]
