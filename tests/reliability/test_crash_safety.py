"""Crash safety: SIGKILL the real daemon 10 times while agents stream; nothing lost, nothing twice.

Several agents (threads, each with the real `agent._transport.Transport` and its own spool
directory) stream numbered one-step batches to `spikewatch serve`. The daemon is killed
with SIGKILL at random moments and restarted on the same ports and database. At the end every
agent must have every message acknowledged, and the database must hold every sequence number of
every session exactly once: the session's contiguous high-water mark equals the number of messages
sent with no gaps, and each (run, metric, step) has exactly one scalar row with the right value.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from spikewatch.agent._transport import Transport
from spikewatch.protocol import wire
from tests.reliability._daemon import Daemon

AGENTS = 4
KILLS = 10
METRICS = ("loss", "grad_norm")


class Agent(threading.Thread):
    """Streams batch k = one record at step k (hello is seq 1, batch k is seq k + 1)."""

    def __init__(self, endpoint: str, run: str, spool: Path, period: float) -> None:
        super().__init__(daemon=True, name=f"agent-{run}")
        self.transport = Transport(endpoint, run=run, spool_dir=spool, resend_after=0.5,
                                   max_queue=4096)
        self.run_name, self.period = run, period
        self.steps = 0
        self.halt = threading.Event()

    def run(self) -> None:
        assert self.transport.hello({"agent": self.run_name})
        while not self.halt.is_set():
            k = self.steps + 1
            rec = wire.Record(k, time.time(), {"loss": float(k), "grad_norm": k / 2.0})
            assert self.transport.submit([rec]), f"{self.run_name}: step {k} dropped"
            self.steps = k
            self.halt.wait(self.period)

    def settled(self) -> bool:
        c = self.transport.counters()
        return (c.acked == c.submitted == self.steps + 1 and c.queued == 0 and c.in_flight == 0
                and c.spool_pending == 0)


def _check_database(url: str, agents: list[Agent]) -> None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            for a in agents:
                rid = conn.execute(text("SELECT id FROM runs WHERE name = :n"),
                                   {"n": a.run_name}).scalar_one()
                sessions = conn.execute(text(
                    "SELECT session, high_seq, seen FROM sessions WHERE run_id = :r"),
                    {"r": rid}).all()
                assert [(s.session, s.high_seq, s.seen) for s in sessions] == [
                    (a.transport.session, a.steps + 1, "[]")], a.run_name
                for metric in METRICS:
                    rows = conn.execute(text(
                        "SELECT step, COUNT(*) AS n, MIN(value) AS lo, MAX(value) AS hi "
                        "FROM scalars WHERE run_id = :r AND metric = :m GROUP BY step "
                        "ORDER BY step"), {"r": rid, "m": metric}).all()
                    steps = [r.step for r in rows]
                    missing = sorted(set(range(1, a.steps + 1)) - set(steps))
                    assert not missing, f"{a.run_name}/{metric}: lost steps {missing[:20]}"
                    assert steps == list(range(1, a.steps + 1)), f"{a.run_name}/{metric}: extra"
                    dups = [r.step for r in rows if r.n != 1]
                    assert not dups, f"{a.run_name}/{metric}: duplicate rows at {dups[:20]}"
                    scale = 1.0 if metric == "loss" else 0.5
                    bad = [r.step for r in rows if not r.lo == r.hi == r.step * scale]
                    assert not bad, f"{a.run_name}/{metric}: wrong values at {bad[:20]}"
    finally:
        engine.dispose()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigkill_ten_times_loses_and_duplicates_nothing(db_url: str, tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    daemon = Daemon(db_url, tmp_path)
    daemon.start()
    daemon.wait_ready()
    agents = [Agent(daemon.zmq, f"crash-{i}", tmp_path / f"spool-{i}", period=0.01)
              for i in range(AGENTS)]
    try:
        for a in agents:
            a.start()
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.2, 1.5))
            daemon.kill()
            time.sleep(rng.uniform(0.0, 0.5))
            daemon.start()
            daemon.wait_ready()
        time.sleep(rng.uniform(0.2, 1.0))
        for a in agents:
            a.halt.set()
            a.join(10)
        deadline = time.monotonic() + 90
        while not all(a.settled() for a in agents) and time.monotonic() < deadline:
            time.sleep(0.1)
        states = {a.run_name: (a.steps, a.transport.counters()) for a in agents}
        assert all(a.settled() for a in agents), f"seed {seed}: not all acked: {states}"
        for a in agents:
            c = a.transport.counters()
            assert c.dropped == c.rejected == 0, (seed, a.run_name, c)
        # The faults were real: messages had to be re-sent or replayed from the spool.
        assert sum(c.resent + c.replayed for _, c in states.values()) > 0, states
        assert daemon.starts == KILLS + 1
    finally:
        for a in agents:
            a.halt.set()
            a.transport.close(timeout=2.0)
        assert daemon.stop() == 0, daemon.tail()
    _check_database(db_url, agents)
    print(f"crash safety ({db_url.split(':')[0]}): {KILLS} SIGKILLs, {AGENTS} agents, "
          f"{sum(a.steps + 1 for a in agents)} messages, every one stored exactly once; "
          f"re-sent {sum(c.resent for _, c in states.values())}, replayed from spool "
          f"{sum(c.replayed for _, c in states.values())}, seed {seed}")
