"""The guard's clean-loss triggers: swings and spikes of a logged `eval_loss` (minibatch
training, where the stability ratio does not see the spikes coming). What triggers them, what
they stream, and real runs that log a swinging or spiking `eval_loss`."""

from __future__ import annotations

import math

import pytest

import spikewatch
from spikewatch.agent._guard import Guard, GuardMachine
from spikewatch.monitor.loss_swings import SwingCounter
from spikewatch.protocol.names import EventType
from tests.agent import _delivered as dl
from tests.agent._loop import guarded_seed_run, train_on
from tests.agent._peer import Peer


def test_a_new_swing_with_enough_recent_ones_triggers_the_action_then_it_releases() -> None:
    m = GuardMachine(Guard(action="lr", factor=0.5, hold_steps=5, release_steps=2,
                           swings_before_spike=True))
    assert m.observe_swings(10, 1, 1) == []  # one swing: fewer than `swings` (2)
    assert m.observe_swings(15, 1, 1) == []  # no new swing
    [(kind, event)] = m.observe_swings(20, 2, 2)
    assert kind == "guard_action"
    assert (event["trigger"], event["loss_swings"], event["from_step"]) == ("loss_swings", 2, 21)
    assert "swings" in event["why"]
    assert m.multiplier(21) == m.multiplier(25) == 0.5  # the hold: steps 21..25
    assert m.multiplier(26) == pytest.approx(0.75)  # half-way back
    assert m.release_due(26) == []
    [(kind, release)] = m.release_due(27)
    assert (kind, release["started_at_step"], release["steps"]) == ("guard_release", 21, 7)
    assert m.multiplier(27) == 1.0
    assert m.observe_swings(40, 2, 2) == []  # the same swings again: nothing new


def test_a_swing_triggered_v_action_lifts_again_at_most_once_per_hold() -> None:
    m = GuardMachine(Guard(action="v", hold_steps=50, release_steps=0, swings_before_spike=True))
    [(_, first)] = m.observe_swings(20, 2, 2)
    assert m.lifts_v(21)
    assert first["stability_ratio"] != first["stability_ratio"]  # no reading yet: NaN
    assert m.observe_swings(40, 3, 3) == []  # within the hold: held on, not lifted
    assert not m.lifts_v(41)
    [(_, again)] = m.observe_swings(80, 4, 4)
    assert (again["lift"], again["started_at_step"], again["trigger"]) == (2, 21, "loss_swings")
    assert m.lifts_v(81)
    assert m.actions == 2


def test_a_relift_names_its_own_trigger_not_the_action_s() -> None:
    m = GuardMachine(Guard(action="v", rise=1.0, sustain=1, hold_steps=10, release_steps=50,
                           swings_before_spike=True))
    [(_, first)] = m.observe_swings(20, 2, 2)
    assert (first["trigger"], first["loss_swings"]) == ("loss_swings", 2)
    [(_, again)] = m.observe(40, 1.5, 0.1, 1.0)  # the ratio, past the edge, 20 steps later
    assert (again["trigger"], again["lift"], again["started_at_step"]) == (
        "stability_ratio", 2, 21)
    assert "loss_swings" not in again


def test_a_spike_of_the_clean_loss_triggers_the_action_once() -> None:
    m = GuardMachine(Guard(action="lr", hold_steps=5, release_steps=0))
    [(kind, event)] = m.observe_swings(30, 0, 0, spikes=1)
    assert (kind, event["trigger"], event["from_step"]) == ("guard_action", "clean_loss_spike", 31)
    assert "loss_swings" not in event
    assert "spiked" in event["why"]
    assert m.observe_swings(31, 0, 0, spikes=1) == []  # the same spike: nothing new
    assert m.release_due(35)
    [(_, again)] = m.observe_swings(60, 0, 0, spikes=2)
    assert again["trigger"] == "clean_loss_spike"
    assert m.actions == 2


def test_swings_can_be_made_to_count_only_after_the_clean_loss_spiked() -> None:
    """`swings_before_spike=False` (the page's condition): swings alone never touch a run whose
    clean loss has not spiked; after a spike they trigger as usual."""
    m = GuardMachine(Guard(action="lr", hold_steps=5, release_steps=0, swings_before_spike=False))
    assert all(m.observe_swings(10 * k, k, k) == [] for k in range(1, 20))
    assert m.actions == 0
    [(_, spike)] = m.observe_swings(200, 19, 19, spikes=1)
    assert spike["trigger"] == "clean_loss_spike"
    assert m.release_due(205)
    [(_, swing)] = m.observe_swings(300, 20, 3, spikes=1)
    assert (swing["trigger"], swing["loss_swings"]) == ("loss_swings", 3)
    assert "after a spike" in swing["why"]
    assert m.actions == 2


def test_the_clean_loss_triggers_can_be_turned_off() -> None:
    m = GuardMachine(Guard(swings=0))
    assert all(m.observe_swings(10 * k, k, k, k) == [] for k in range(1, 20))
    assert m.actions == 0
    with pytest.raises(ValueError, match=r"Guard\(swings="):
        Guard(swings=-1)


def test_the_counter_says_how_many_swings_and_spikes_it_has_seen_and_count_is_read_only(
        ) -> None:  # fmt: skip
    c = SwingCounter(span=100)
    values = [1.0] * 60 + [1.6, 1.0] * 3
    for i, v in enumerate(values):
        c.update(i, v)
    assert c.completed == 3
    assert c.count(1000) == 0  # long after: none recent ...
    assert c.count(65) == 3  # ... and asking changed nothing
    c.update(66, 2.5)  # a spike clears the recent ones, not the total
    assert (c.count(66), c.completed, c.spikes) == (0, 3, 1)
    c.update(67, 2.6)  # the same spike
    c.update(68, math.nan)  # non-finite: a spike, still the same one
    assert c.spikes == 1
    c.update(69, 1.0)
    c.update(70, 2.5)  # a new one
    assert c.spikes == 2


def _run(steps: int, guard: Guard, peer: Peer, evals: list[float]
         ) -> tuple[list[float], spikewatch.Monitor]:  # fmt: skip
    opt, mon, loss_fn = guarded_seed_run(peer.endpoint, guard, 0.01, "swings")
    losses = train_on(mon, opt, loss_fn, steps, evals=evals)
    mon.close(timeout=5.0)
    return losses, mon


SWINGS = {70: 1.6, 100: 1.6}  # two 1.6x swings of the clean loss: the second completes at 101


@pytest.mark.parametrize(("marks", "trigger", "at", "guard"), [
    (SWINGS, "loss_swings", 101, Guard(swings_before_spike=True)),
    ({100: 2.5}, "clean_loss_spike", 100, Guard()),  # a 2.5x spike at 100
])  # fmt: skip
def test_a_job_whose_clean_loss_swings_or_spikes_is_guarded_from_the_next_drain(
        peer: Peer, marks: dict[int, float], trigger: str, at: int, guard: Guard
        ) -> None:  # fmt: skip
    """The clean loss (made so here: the run itself is healthy) swings or spikes; the drain
    after it hands that to the guard, and v is lifted from the step after. Without the
    trigger the same run is not touched."""
    evals = [marks.get(i, 1.0) for i in range(200)]
    plain, mon = _run(200, Guard(swings=0), peer, evals)
    assert mon._guard is not None
    assert mon._guard.actions == 0
    assert dl.events(peer, EventType.GUARD_ACTION.value) == []
    guarded, mon = _run(200, guard, peer, evals)
    [(step, event)] = dl.events(peer, EventType.GUARD_ACTION.value)
    start = event.data["from_step"]
    assert isinstance(start, int)
    assert (event.data["trigger"], event.data["action"]) == (trigger, "v")
    assert event.data.get("loss_swings") == (2 if trigger == "loss_swings" else None)
    assert start == step + 1
    assert at < start <= at + 2 * 25  # the drain every 25 steps hands it over
    assert guarded[: start + 1] == plain[: start + 1]  # the lift shows from the next loss on
    assert guarded[start + 1] != plain[start + 1]


def test_by_default_swings_of_a_clean_loss_that_never_spiked_leave_the_run_untouched(
        peer: Peer) -> None:  # fmt: skip
    """Near its edge a minibatch run swings whether or not it will spike: by default the guard
    counts swings only once the clean loss has spiked, so this run is bit-identical."""
    evals = [SWINGS.get(i, 1.0) for i in range(200)]
    plain, _ = _run(200, Guard(swings=0), peer, evals)
    guarded, mon = _run(200, Guard(), peer, evals)
    assert mon._guard is not None
    assert mon._guard.actions == 0
    assert dl.events(peer, EventType.GUARD_ACTION.value) == []
    assert guarded == plain
