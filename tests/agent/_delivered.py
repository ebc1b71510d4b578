"""What the agent delivered to the test peer: batches, records, values by step, events."""

from __future__ import annotations

from spikewatch.agent._monitor import Monitor
from spikewatch.protocol import wire
from tests.agent._peer import Peer


def batches(peer: Peer) -> list[wire.Batch]:
    return [m for m in peer.first_seen() if isinstance(m, wire.Batch)]


def hello(peer: Peer) -> wire.Hello:
    hellos = [m for m in peer.first_seen() if isinstance(m, wire.Hello)]
    assert len(hellos) == 1
    return hellos[0]


def records(peer: Peer) -> list[wire.Record]:
    return [r for b in batches(peer) for r in b.records]


def by_step(peer: Peer, metric: str) -> dict[int, float]:
    return {r.step: r.scalars[metric] for r in records(peer) if metric in r.scalars}


def events(peer: Peer, kind: str) -> list[tuple[int, wire.Event]]:
    return [(r.step, e) for r in records(peer) for e in r.events if e.type == kind]


def closed_and_delivered(peer: Peer, monitor: Monitor) -> None:
    monitor.close(timeout=5.0)
    assert peer.wait_for(lambda: monitor.counters().acked == monitor.counters().submitted, 10)
    assert peer.invalid == []  # every frame the agent built passed the server's validation
    assert monitor.counters().rejected == 0
