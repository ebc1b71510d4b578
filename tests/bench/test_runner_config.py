"""The runner's configurations, its interleaved with/without-agent training and its tables,
without a server (a fake `agent.attach`)."""

from __future__ import annotations

import math
from typing import Any

import pytest

pytest.importorskip("torch")

import torch

import spikewatch
from benchmarks.early_warning import runner
from benchmarks.early_warning._configs import PRESETS, Config, from_options, parse
from benchmarks.early_warning._options import add_options
from benchmarks.early_warning._train import train_pair
from benchmarks.early_warning.runner import Row
from benchmarks.early_warning.scenarios import QUICK, SCENARIOS, by_name


def test_the_default_config_passes_nothing_but_run_and_endpoint() -> None:
    c = parse("default")
    assert c == Config()
    assert c.attach_kwargs(lambda: None) == {}
    assert c.describe(env={}) == "attach defaults, no closure"


@pytest.mark.parametrize("name", [*PRESETS, "closure", "closure-fd", "noclosure-full",
                                  "noclosure-light-0.05", "closure-auto-default-inf"])
def test_config_names_round_trip(name: str) -> None:
    c = parse(name)
    assert parse(c.name) == c
    assert c.name == name


def test_the_old_benchmark_config_is_named_in_words() -> None:
    c = parse("closure-exact-full-inf")
    fn = object()
    assert c.attach_kwargs(fn) == {"closure": fn, "curvature": "exact", "profile": "full",
                                   "overhead_budget": math.inf}  # fmt: skip
    assert c.describe(env={}) == "closure=exact, profile=full, budget=inf"
    assert parse("closure-fd").describe(env={}) == (
        "closure=fd, profile and budget at the library default")
    assert "SPIKEWATCH_PROFILE=full" in Config().describe(env={"SPIKEWATCH_PROFILE": "full"})
    assert "SPIKEWATCH" not in c.describe(env={"SPIKEWATCH_PROFILE": "full"})  # passed: wins


@pytest.mark.parametrize("bad", ["exact", "full", "closure-bogus", "noclosure-exact",
                                 "closure-full-0", "closure-full-inf-x", ""])
def test_bad_config_names_are_refused(bad: str) -> None:
    with pytest.raises(KeyError):
        parse(bad)


def _args(*argv: str) -> Any:
    import argparse

    p = argparse.ArgumentParser()
    add_options(p)
    return p.parse_args(list(argv))


def test_cli_selects_only_the_default_unless_asked() -> None:
    assert runner.selected_configs(_args()) == [Config()]
    got = runner.selected_configs(_args("--configs", "default,closure-exact-full-inf",
                                        "--closure", "fd", "--budget", "inf"))  # fmt: skip
    assert [c.name for c in got] == ["default", "closure-exact-full-inf", "closure-fd-inf"]
    assert runner.selected_configs(_args("--profile", "full")) == [Config(profile="full")]
    assert from_options(None, None, None) is None
    assert runner.main(_args("--configs", "bogus")) == 2
    assert runner.main(_args("--scenarios", "no-such")) == 2


def test_list_names_scenarios_and_configs(capsys: pytest.CaptureFixture[str]) -> None:
    assert runner.main(_args("--list")) == 0
    out = capsys.readouterr().out
    assert all(s.name in out for s in SCENARIOS)
    assert "attach defaults, no closure" in out
    assert "closure=exact, profile=full" in out


class _FakeMonitor:
    def __init__(self, model: torch.nn.Module, meddle: bool) -> None:
        self.model, self.meddle, self.logged = model, meddle, 0
        self.closed = False

    def log(self, loss: Any = None, **scalars: Any) -> None:
        self.logged += 1
        if self.meddle and self.logged == 7:  # a broken agent that writes to the model
            with torch.no_grad():
                next(iter(self.model.parameters())).mul_(1.001)

    def close(self, timeout: float = 5.0) -> None:
        self.closed = True


@pytest.mark.parametrize("meddle", [False, True])
def test_train_pair_attaches_like_a_user_and_checks_the_trajectory(
        monkeypatch: pytest.MonkeyPatch, meddle: bool) -> None:  # fmt: skip
    calls: list[dict[str, Any]] = []
    mons: list[_FakeMonitor] = []

    def fake_attach(model: torch.nn.Module, optimizer: Any, **kw: Any) -> _FakeMonitor:
        calls.append(kw)
        mons.append(_FakeMonitor(model, meddle))
        return mons[0]

    monkeypatch.setattr(spikewatch, "attach", fake_attach, raising=False)
    (sc,) = by_name([QUICK[0]])
    tr = train_pair(sc, Config(), "tcp://127.0.0.1:1", "r1", chunk=100)
    assert calls == [{"run": "r1", "endpoint": "tcp://127.0.0.1:1"}]
    assert mons[0].closed
    assert mons[0].logged == sc.steps
    assert len(tr.chunk_ratios) == math.ceil(sc.steps / 100)
    assert tr.attached > 0
    assert tr.unattached > 0
    assert tr.truth == "loss"
    if meddle:
        assert tr.mismatch is not None
        assert "loss differs from step 7" in tr.mismatch
    else:
        assert tr.mismatch is None
        assert tr.onsets


def test_train_pair_logs_eval_loss_for_minibatch_scenarios(monkeypatch: pytest.MonkeyPatch) -> None:
    logged: list[set[str]] = []

    class Mon:
        def log(self, loss: Any = None, **scalars: Any) -> None:
            logged.append(set(scalars))

        def close(self, timeout: float = 5.0) -> None:
            pass

    monkeypatch.setattr(spikewatch, "attach", lambda *a, **k: Mon(), raising=False)
    sc = next(s for s in SCENARIOS if s.minibatch)
    short = type(sc)(sc.name, sc.family, sc.control, 60, sc.build, sc.minibatch)
    tr = train_pair(short, parse("closure-exact-full-inf"), "tcp://127.0.0.1:1", "r2")
    assert tr.truth == "eval_loss"
    assert tr.mismatch is None
    assert logged == [{"eval_loss"}] * 60


def _row(config: Config, scenario: str, family: str, control: bool) -> Row:
    return Row(scenario, family, control, config.name, config.describe(env={}), "loss", 100,
               [60], [12], 1, 0, 0, 2, [("predicted_loss_spike", 48)], 1.0, 0.5, 0.49, 1.02,
               1.0, 1.05, [1.0, 1.02, 1.05])  # fmt: skip


def test_every_table_block_and_summary_line_names_its_config() -> None:
    rows = [_row(c, f"sc{i}", fam, i % 2 == 1)
            for c in (Config(), parse("closure-exact-full-inf"))
            for i, fam in enumerate(("quadratic", "quadratic", "cnn"))]  # fmt: skip
    text = runner.table(rows)
    assert "== config default: attach defaults, no closure ==" in text
    assert "== config closure-exact-full-inf: closure=exact, profile=full, budget=inf ==" in text
    summaries = [ln for ln in text.splitlines() if ln.startswith("[")]
    assert len(summaries) == 2 * 3  # per config: two families and ALL
    for ln in summaries:
        assert "[config: " in ln
        assert "step time attached/unattached" in ln
    assert sum("[config: attach defaults, no closure]" in ln for ln in summaries) == 3
    for ln in text.splitlines():  # each run line carries its config's name
        if ln.startswith("sc") and not ln.startswith("scenario"):
            assert "default" in ln or "closure-exact-full-inf" in ln
    assert "1.020 [1.000-1.050]" in text
