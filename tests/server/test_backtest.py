"""Backtest scoring (pure functions) and `spikewatch backtest` over a real SQLite store."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest

from spikewatch.protocol import wire
from spikewatch.server import backtest as bt
from spikewatch.server.rules import load_rules, parse_rules
from spikewatch.server.store import Store
from spikewatch.server.types import AlertState, Observation, Severity, Transition


def pts(*losses: float, start: int = 0) -> list[tuple[int, float]]:
    return [(start + i, x) for i, x in enumerate(losses)]


def test_spike_onsets_use_the_previous_window_and_quiet_separation() -> None:
    flat = [1.0] * 60
    # a spike at 60 lasting 3 steps, back to normal, a second spike only 20 steps later (same
    # episode), then one 60 quiet steps after that (a new episode)
    loss = flat + [2.5, 3.0, 2.2] + [1.0] * 20 + [2.1] + [1.0] * 60 + [2.2] + [1.0] * 5
    assert bt.spike_onsets(pts(*loss)) == [60, 144]
    # exactly 2× is not a spike; a non-finite loss is
    assert bt.spike_onsets(pts(*flat, 2.0)) == []
    assert bt.spike_onsets(pts(*flat, math.nan)) == [60]
    # the first 50 steps are skipped (incomplete window), as in monitor.seed_fnn
    assert bt.spike_onsets(pts(1.0, 5.0, *flat)) == []
    # the window is step-based: a low value more than 50 steps back no longer counts
    assert bt.spike_onsets([(0, 0.4), (51, 1.0), (52, 1.0)]) == []
    assert bt.spike_onsets([(0, 0.4), (50, 1.0)]) == [50]
    assert bt.spike_onsets([]) == []


def test_rise_and_grade_after_a_page() -> None:
    loss = pts(*([1.0] * 60 + [1.7] + [1.0] * 100 + [2.4]))
    assert bt.max_rise_after(loss, 10) == pytest.approx(1.7)
    assert bt.grade(bt.max_rise_after(loss, 10)) == "minor"
    assert bt.grade(bt.max_rise_after(loss, 70, horizon=100)) == "true"  # 161 is within 70 + 100
    assert bt.grade(bt.max_rise_after(loss, 62, horizon=50)) == "false"
    assert bt.grade(math.inf) == "true"


def tr(rule: str, state: AlertState, step: int, sev: Severity = Severity.PAGE) -> Transition:
    return Transition(rule, "r", sev, state, step, float(step), 1.0)


P, F, R, X = AlertState.PENDING, AlertState.FIRING, AlertState.RESOLVED, AlertState.INACTIVE


def test_episodes_and_leads() -> None:
    log = [tr("a", P, 10), tr("a", F, 15), tr("b", P, 16), tr("b", X, 17), tr("a", R, 30),
           tr("a", P, 90), tr("a", F, 95), tr("b", P, 100), tr("b", F, 100)]  # fmt: skip
    eps = bt.episodes(log)
    assert [(e.rule, e.first_step, e.fired_step, e.resolved_step) for e in eps] == [
        ("a", 10, 15, 30), ("a", 90, 95, None), ("b", 100, 100, None)]  # fmt: skip
    a = [e for e in eps if e.rule == "a"]
    assert bt.lead(a, 40, None) == 25  # fired 15, resolved 30, within 100 steps
    assert bt.lead(a, 200, None, horizon=100) == 105  # still firing from 95: counts, lead 105
    assert bt.lead(a, 200, 96) is None  # fired before the previous onset: not this onset's
    assert bt.lead(a, 15, None) is None  # firing at the onset itself is not a lead
    assert bt.lead(a, 140, 40, horizon=30) == 45  # older than the horizon but still firing
    two = [bt.Episode("a", Severity.PAGE, 5, 10, 20, 1.0), bt.Episode("a", Severity.PAGE, 55, 60,
                                                                       70, 1.0)]  # fmt: skip
    assert bt.lead(two, 80, None) == 20  # counted from the latest firing, not the first
    resolved = [bt.Episode("a", Severity.PAGE, 90, 95, 100, 1.0)]
    assert bt.lead(resolved, 140, 40, horizon=30) is None  # older and resolved: does not lead


def synthetic_run(steps: int = 400) -> list[tuple[int, dict[str, float], list[wire.Event]]]:
    """A run that spikes at 230 (predicted from 200, after an earlier instability that moved the
    loss 1.5×), wobbles harmlessly at 320, and has an unrescaled momentum jump at 100 that does
    nothing."""
    rows = []
    for s in range(1, steps + 1):
        loss = 1.0 / math.sqrt(s)
        r, rho = 0.8, 0.02
        if 200 <= s < 235:
            r, rho = 1.05, min(0.02 * 1.12 ** (s - 200), 3.0)
        if s >= 230:
            loss *= 1.0 + 1.2 * min(s - 229, 10) if s < 260 else 1.0
        if 320 <= s < 330:
            r = 1.05
        jump = {"rescaled": False, "needs_rescale": True, "old": 0.9, "new": 0.97}
        events = [wire.Event("momentum_jump", jump)] \
            if s == 100 else []  # fmt: skip
        values = {"loss": loss, "stability_ratio_two_secant": r, "rho_sampled": rho,
                  "instability_rise": 1.5 if s > 150 else 1.0, "instability_recovery": 0.9}
        rows.append((s, values, events))
    return rows


def test_score_on_a_replayed_run() -> None:
    rules = load_rules()
    rows = synthetic_run()
    obs = [(Observation("job", s, float(s), v, tuple(e.type for e in ev)), ev)
           for s, v, ev in rows]  # fmt: skip
    log = bt.replay(rules, obs)
    rep = bt.score("job", rules, log, [(s, v["loss"]) for s, v, _ in rows])
    assert rep.onsets == [230]
    by = {s.rule: s for s in rep.rules}
    # predicted_loss_spike needs 2 observations (ratio ≥ 0.99, ρ < 0.5, an earlier rise ≥ 1.5)
    assert [e.fired_step for e in by["predicted_loss_spike"].alerts] == [201, 321]
    assert by["predicted_loss_spike"].leads == [29]
    assert by["predicted_loss_spike"].grades == ["true", "false"]
    assert by["unrescaled_momentum_jump"].grades == ["false"]
    assert by["loss_spike"].leads == [None]  # reactive: fires at the onset, not before
    assert rep.recall == 1.0
    assert rep.page_leads == [29]
    assert rep.median_lead == 29
    # the momentum jump is a warning now (it did not spike on the benchmark), not a false page
    assert (rep.true_pages, rep.minor_pages, rep.false_pages) == (1, 0, 1)
    text = bt.format_report(rep)
    assert "1 loss spike onset(s) at step 230" in text
    assert "page recall 1/1 (100 %), median page lead 29 steps, false pages 1" in text


def test_score_without_onsets_or_loss() -> None:
    rules = parse_rules("rules: [{name: x, severity: page, condition: {event: nonfinite}}]")
    rep = bt.score("r", rules, [tr("x", P, 3), tr("x", F, 3)], [])
    assert rep.recall is None
    assert rep.false_pages == 1
    assert any("no loss series" in n for n in rep.notes)
    assert "page recall n/a (no onsets)" in bt.format_report(rep)


# --- the CLI over a real SQLite store ------------------------------------------------------------


def stored_run(url: str, run: str = "job-7") -> None:
    store = Store(url)
    store.upgrade()
    session = "ab" * 16
    hdr = wire.Header(session, 1, run)
    store.write(wire.Hello(hdr, {"optimizer": "Adam"}))
    rows = synthetic_run()
    for seq, i in enumerate(range(0, len(rows), 100), start=2):
        recs = tuple(wire.Record(s, 1.7e9 + s, v, events=tuple(ev)) for s, v, ev in rows[i:i + 100])
        store.write(wire.Batch(wire.Header(session, seq, run), recs))
    store.close()


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="spikewatch")
    bt.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def test_backtest_command_replays_a_stored_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'sw.db'}"
    stored_run(url)
    assert cli(["backtest", "--run", "job-7", "--db", url]) == 0
    out = capsys.readouterr().out
    assert "run job-7: 400 loss points, 1 loss spike onset(s) at step 230" in out
    line = next(x for x in out.splitlines() if x.startswith("predicted_loss_spike "))
    assert line.split()[1:4] == ["page", "2", "1/1"]
    assert "230:+29" in line
    # the event's data (needs_rescale: true) was read back from the store
    assert "unrescaled_momentum_jump [warning] 100 → 201, value 1, false" in out
    assert "page recall 1/1 (100 %), median page lead 29 steps, false pages 1" in out


def test_backtest_command_with_a_custom_rule_file_and_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'sw.db'}"
    stored_run(url)
    rules = tmp_path / "mine.yaml"
    rules.write_text("rules:\n  - name: early\n    severity: page\n"
                     "    condition: {metric: rho_sampled, op: '>', value: 0.1}\n")  # fmt: skip
    assert cli(["backtest", "--rules", str(rules), "--run", "job-7", "--db", url]) == 0
    out = capsys.readouterr().out
    assert "early" in out
    assert "230:+" in out
    rules.write_text("rules: [{name: early, severity: page, condition: {metric: rh0}}]\n")
    assert cli(["backtest", "--rules", str(rules), "--run", "job-7", "--db", url]) == 2
    assert "rule 'early': condition.metric: unknown metric 'rh0'" in capsys.readouterr().err
    assert cli(["backtest", "--run", "nope", "--db", url]) == 2
    assert "no run named 'nope'" in capsys.readouterr().err


def test_backtest_scores_a_minibatch_job_on_its_clean_loss(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--truth eval_loss: the spikes are read on the clean loss the job logged, not on the
    batch loss (here flat: no onset there)."""
    url = f"sqlite:///{tmp_path / 'sw.db'}"
    store = Store(url)
    store.upgrade()
    session = "cd" * 16
    store.write(wire.Hello(wire.Header(session, 1, "mb"), {"optimizer": "Adam"}))
    recs = tuple(wire.Record(s, 1.7e9 + s, {"loss": 1.0, "eval_loss": 3.0 if s == 300 else 1.0})
                 for s in range(400))  # fmt: skip
    store.write(wire.Batch(wire.Header(session, 2, "mb"), recs))
    store.close()
    assert cli(["backtest", "--run", "mb", "--db", url]) == 0
    assert "400 loss points, 0 loss spike onset(s)" in capsys.readouterr().out
    assert cli(["backtest", "--run", "mb", "--db", url, "--truth", "eval_loss"]) == 0
    assert "400 eval_loss points, 1 eval_loss spike onset(s) at step 300" in capsys.readouterr().out
    assert cli(["backtest", "--run", "mb", "--db", url, "--truth", "val_loss"]) == 2
    assert "has no 'val_loss' series" in capsys.readouterr().err
