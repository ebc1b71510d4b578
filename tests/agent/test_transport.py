"""The transport over real sockets: delivery, ack/resend, nack, outage spooling, restart, priority
drops, bounded close and exit, oversize input, CURVE. The peer is a real ROUTER (`_peer.Peer`)."""

from __future__ import annotations

import math
import random
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from spikewatch.agent._transport import (
    PRIORITY_DIAGNOSTICS,
    PRIORITY_EVENTS,
    PRIORITY_SIGNALS,
    Transport,
)
from spikewatch.agent._transport_queue import PriorityDropQueue
from spikewatch.protocol import wire
from tests.agent._peer import Peer, free_endpoint

ROOT = Path(__file__).resolve().parents[2]


def _rec(step: int, **scalars: float) -> wire.Record:
    return wire.Record(step=step, time=1700000000.0 + step,
                       scalars={"loss": float(step), **scalars})


def _wait(pred: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


@pytest.fixture
def make() -> Iterator[Callable[..., Transport]]:
    """Build transports that are always closed at the end of the test."""
    made: list[Transport] = []

    def build(endpoint: str, **kw: Any) -> Transport:
        kw.setdefault("run", "run-1")
        kw.setdefault("resend_after", 0.3)
        kw.setdefault("linger_ms", 0)
        t = Transport(endpoint, **kw)
        made.append(t)
        return t

    yield build
    for t in made:
        t.close(timeout=1.0)


def _steps(msgs: list[wire.Message]) -> list[int]:
    return [r.step for m in msgs if isinstance(m, wire.Batch) for r in m.records]


def test_delivery_in_order_with_hello_first(peer: Peer, make: Callable[..., Transport],
                                            tmp_path: Path) -> None:
    t = make(peer.endpoint, rank=1, world_size=2, spool_dir=tmp_path)
    t.hello({"model_params": 1234, "optimizer": "AdamW", "lr": 1e-3, "resumed_at": None})
    for i in range(100):
        assert t.submit([_rec(i, grad_norm=math.inf if i == 50 else 1.0)])
    assert t.flush(10)
    assert peer.wait_for(lambda: len(peer.seqs(t.session)) == 101)
    msgs = peer.first_seen(t.session)
    assert [m.header.seq for m in msgs] == list(range(1, 102))
    assert isinstance(msgs[0], wire.Hello)
    assert msgs[0].meta == {"model_params": 1234, "optimizer": "AdamW", "lr": 1e-3,
                            "resumed_at": None}
    assert _steps(msgs) == list(range(100))
    assert all(m.header.run == "run-1" and m.header.rank == 1 and m.header.world_size == 2
               for m in msgs)
    assert isinstance(msgs[51], wire.Batch)
    assert msgs[51].records[0].scalars["grad_norm"] == math.inf
    c = t.counters()
    assert (c.submitted, c.sent, c.acked, c.dropped, c.rejected, c.in_flight) == (
        101, 101, 101, 0, 0, 0)
    assert c.online
    t.close()
    assert list(tmp_path.iterdir()) == []  # nothing left to replay, nothing left on disk


def test_lost_acks_are_resent_and_duplicates_harmless(peer: Peer,
                                                       make: Callable[..., Transport]) -> None:
    peer.drop_acks = 5
    t = make(peer.endpoint, resend_after=0.2)
    for i in range(10):
        t.submit([_rec(i)])
    assert _wait(lambda: t.counters().acked == 10)
    c = t.counters()
    assert c.resent >= 5
    assert c.in_flight == 0
    assert c.dropped == 0
    arrivals = [m.header.seq for m in peer.messages(t.session)]
    assert all(arrivals.count(s) >= 2 for s in range(1, 6))  # the server saw duplicates
    assert peer.seqs(t.session) == list(range(1, 11))
    assert _steps(peer.first_seen(t.session)) == list(range(10))


def test_nack_drops_and_counts_rejected(peer: Peer, make: Callable[..., Transport]) -> None:
    t = make(peer.endpoint)
    t.submit([_rec(0)])
    t.submit([wire.Record(step=1, time=1.0, scalars={"Not A Metric": 1.0})])
    t.submit([_rec(2)])
    assert _wait(lambda: t.counters().rejected == 1 and t.counters().acked == 2)
    assert peer.invalid == ["bad_name"]
    assert peer.seqs(t.session) == [1, 3]
    time.sleep(0.8)  # well past resend_after: a nacked message is never sent again
    assert peer.invalid == ["bad_name"]
    c = t.counters()
    assert c.in_flight == 0
    assert c.resent == 0


def test_spool_and_replay_after_outage(make: Callable[..., Transport], tmp_path: Path) -> None:
    endpoint = free_endpoint()
    t = make(endpoint, spool_dir=tmp_path)
    t.hello({"note": "outage"})
    worst = 0.0
    for i in range(60):
        t0 = time.perf_counter()
        assert t.submit([_rec(i)])
        worst = max(worst, time.perf_counter() - t0)
    assert worst < 0.5  # never blocks, even with no server
    assert t.flush(10)
    c = t.counters()
    assert (c.spooled, c.acked, c.spool_pending, c.online) == (61, 0, 61, False)
    assert list(tmp_path.glob("*/p*.seg"))  # on disk
    with Peer(endpoint) as peer:
        assert peer.wait_for(lambda: len(peer.seqs(t.session)) == 61)
        for i in range(60, 70):  # live data after the outage queues behind the replay
            t.submit([_rec(i)])
        assert peer.wait_for(lambda: len(peer.seqs(t.session)) == 71)
        assert peer.seqs(t.session) == list(range(1, 72))
        assert _steps(peer.first_seen(t.session)) == list(range(70))
        assert _wait(lambda: t.counters().acked == 71)
        c = t.counters()
        assert c.replayed >= 61
        assert c.spool_pending == 0
        assert c.dropped == 0
        assert c.online
        assert not list(tmp_path.glob("*/p*.seg"))


def test_spool_survives_restart_of_the_transport(make: Callable[..., Transport],
                                                 tmp_path: Path) -> None:
    endpoint = free_endpoint()
    first = make(endpoint, spool_dir=tmp_path)
    first.hello({"attempt": 1})
    for i in range(30):
        first.submit([_rec(i)])
    t0 = time.monotonic()
    first.close(timeout=1.0)
    assert time.monotonic() - t0 < 5
    assert first.counters().spool_pending == 31
    assert list(tmp_path.glob(f"*-{first.session}/p*.seg"))
    with Peer(endpoint) as peer:
        second = make(endpoint, spool_dir=tmp_path)
        second.hello({"attempt": 2})
        for i in range(100, 105):
            second.submit([_rec(i)])
        assert peer.wait_for(lambda: len(peer.seqs(first.session)) == 31
                             and len(peer.seqs(second.session)) == 6)
        # the old session keeps its original ids, so the server's dedup stays exact
        assert peer.seqs(first.session) == list(range(1, 32))
        assert peer.seqs(second.session) == list(range(1, 7))
        order = [m.header.session for m in peer.first_seen()]
        assert order == [first.session] * 31 + [second.session] * 6  # oldest session first
        assert _steps(peer.first_seen(first.session)) == list(range(30))
        assert _wait(lambda: not list(tmp_path.glob(f"*-{first.session}")))


def _padded(step: int, width: int) -> wire.Record:
    rnd = random.Random(step)
    return wire.Record(step=step, time=float(step),
                       layers={"rho": {f"l{j}": rnd.random() for j in range(width)}})


def test_full_spool_drops_lowest_priority_first(make: Callable[..., Transport],
                                                tmp_path: Path) -> None:
    endpoint = free_endpoint()
    t = make(endpoint, spool_dir=tmp_path, max_spool_bytes=64 << 10)
    worst = 0.0
    plan = [(PRIORITY_DIAGNOSTICS, range(0, 60)), (PRIORITY_SIGNALS, range(1000, 1060)),
            (PRIORITY_EVENTS, range(2000, 2020))]
    for prio, steps in plan:  # each record ~1 KiB: 140 KiB offered to a 64 KiB spool
        for s in steps:
            t0 = time.perf_counter()
            t.submit([_padded(s, 40)], priority=prio)
            worst = max(worst, time.perf_counter() - t0)
        assert t.flush(10)
    assert worst < 0.5
    c = t.counters()
    assert c.dropped > 0
    assert c.spool_bytes <= 64 << 10
    with Peer(endpoint) as peer:
        assert _wait(lambda: t.counters().spool_pending == 0 and t.counters().in_flight == 0)
        got = _steps(peer.first_seen(t.session))
    assert [s for s in got if s >= 2000] == list(range(2000, 2020))  # every event kept
    assert [s for s in got if s < 1000] == []  # diagnostics went first
    signals = [s for s in got if 1000 <= s < 2000]
    assert signals
    assert signals == sorted(signals)
    c = t.counters()
    assert c.dropped == 140 - len(got)  # every loss is counted
    assert c.acked == len(got)


def test_queue_drops_lowest_priority_first() -> None:
    q: PriorityDropQueue[str] = PriorityDropQueue(3)
    assert q.put("d0", 0) == (True, 0)
    assert q.put("s0", 1) == (True, 0)
    assert q.put("d1", 0) == (True, 0)
    assert q.put("e0", 2) == (True, 1)  # evicts the oldest diagnostics item
    assert q.put("s1", 1) == (True, 1)  # evicts the remaining diagnostics item
    assert q.put("d2", 0) == (False, 0)  # nothing lower to evict: the newcomer is refused
    assert q.put("s2", 1) == (False, 0)  # equal priority does not evict
    assert [i for _, i in q.take_all()] == ["s0", "e0", "s1"]
    with pytest.raises(ValueError, match="maxlen"):
        PriorityDropQueue(0)


def test_close_is_bounded_without_a_server(make: Callable[..., Transport]) -> None:
    t = make(free_endpoint(), linger_ms=5000)
    for i in range(20):
        t.submit([_rec(i)])
    t0 = time.monotonic()
    t.close(timeout=1.0)
    assert time.monotonic() - t0 < 5
    t.close()  # idempotent
    assert not t.submit([_rec(99)])
    c = t.counters()
    # no spool_dir: the in-memory spool dies with the transport, and says so
    assert c.submitted == 20
    assert c.acked == 0
    assert c.dropped == 21


def test_close_is_bounded_with_a_silent_server(make: Callable[..., Transport],
                                               tmp_path: Path) -> None:
    with Peer() as peer:
        peer.silent = True
        t = make(peer.endpoint, spool_dir=tmp_path, resend_after=2.0, linger_ms=5000)
        for i in range(20):
            t.submit([_rec(i)])
        assert peer.wait_for(lambda: len(peer.seqs(t.session)) == 20)
        t0 = time.monotonic()
        t.close(timeout=1.0)
        assert time.monotonic() - t0 < 5
    c = t.counters()
    assert c.sent == 20
    assert c.acked == 0
    assert c.spool_pending == 20
    assert list(tmp_path.glob("*/p*.seg"))


def test_close_delivers_to_a_server_that_restarts_meanwhile(
        make: Callable[..., Transport]) -> None:
    """close() finds the server gone with the last batch in hand (the default in-memory spool):
    it keeps probing within its timeout and delivers it once the server is back, instead of
    giving up at once and losing it."""
    peer = Peer().start()
    t = make(peer.endpoint)
    restart = threading.Timer(0.5, peer.start)
    try:
        for i in range(5):
            t.submit([_rec(i)])
        assert _wait(lambda: t.counters().acked == 5)
        peer.stop()
        t.submit([_rec(5)])  # the last step's batch: nobody to take it
        assert t.flush(5)
        assert not t.counters().online
        restart.start()
        t0 = time.monotonic()
        t.close(timeout=10.0)
        assert time.monotonic() - t0 < 9  # returns once delivered, not at the timeout
        restart.join(10)
        c = t.counters()
        assert (c.acked, c.dropped, c.spool_pending, c.in_flight) == (6, 0, 0, 0), c
        assert sorted(_steps(peer.first_seen(t.session))) == list(range(6))
    finally:
        restart.cancel()
        if restart.ident is not None:
            restart.join(10)
        peer.stop()


def test_interpreter_exit_never_hangs(tmp_path: Path) -> None:
    with Peer() as peer:
        peer.silent = True
        script = textwrap.dedent(f"""
            import time
            from spikewatch.protocol import wire
            from spikewatch.agent._transport import Transport
            t = Transport({peer.endpoint!r}, run="exit-test", linger_ms=60000,
                          spool_dir={str(tmp_path)!r})
            dead = Transport({free_endpoint()!r}, run="exit-test", linger_ms=60000)
            for i in range(10):
                t.submit([wire.Record(step=i, time=0.0)])
                dead.submit([wire.Record(step=i, time=0.0)])
            time.sleep(0.5)  # sent, never acknowledged
            # no close(): atexit must bound the exit (and spool what the server did not ack)
        """)
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, timeout=60,
                              capture_output=True, text=True)
        elapsed = time.monotonic() - t0
        assert proc.returncode == 0, proc.stderr
        assert elapsed < 20
        assert len(peer.first_seen()) == 10
    assert list(tmp_path.glob("*/p*.seg"))  # the unacknowledged batches were spooled


def test_submit_never_raises_and_splits_oversize(peer: Peer,
                                                 make: Callable[..., Transport]) -> None:
    t = make(peer.endpoint)
    assert not t.submit(None)  # type: ignore[arg-type]
    assert not t.submit([_rec(0)], priority="high")  # type: ignore[arg-type]
    assert t.submit([])  # nothing to send is not a drop
    many = [_rec(i) for i in range(2500)]  # more than wire.MAX_RECORDS in one call
    assert t.submit(many)
    huge = _padded(-1, 4000)  # incompressible: far more than MAX_FRAME_BYTES on its own
    huge = wire.Record(step=10**6, time=0.0, layers={f"m{k}": huge.layers["rho"]
                                                     for k in range(30)})
    heavy = [_padded(3000 + i, 4000) for i in range(30)]  # together > MAX_FRAME_BYTES
    assert t.submit([_rec(5000), huge, _rec(5001)])
    assert t.submit(heavy)
    assert t.submit([object()])  # type: ignore[list-item]
    assert _wait(lambda: t.counters().acked >= 6 and t.counters().queued == 0
                 and t.counters().in_flight == 0, 30)
    got = _steps(peer.first_seen(t.session))
    assert got == list(range(2500)) + [5000, 5001] + [3000 + i for i in range(30)]
    assert all(len(wire.encode(m)) <= wire.MAX_FRAME_BYTES for m in peer.first_seen())
    c = t.counters()
    assert c.oversize == 1
    assert c.dropped == 4  # None, bad priority, the huge record, the object
    assert c.rejected == 0


def test_curve_encrypts_and_refuses_clients_without_keys(make: Callable[..., Transport]) -> None:
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    with Peer(curve_secret_key=server_secret) as peer:
        good = make(peer.endpoint, server_public_key=server_public,
                    client_secret_key=client_secret, client_public_key=client_public)
        plain = make(peer.endpoint)
        for i in range(5):
            good.submit([_rec(i)])
            plain.submit([_rec(i)])
        assert _wait(lambda: good.counters().acked == 5)
        assert plain.flush(5)
        time.sleep(0.3)
        assert peer.seqs(plain.session) == []
        assert plain.counters().acked == 0
        assert plain.counters().spooled == 5
    with pytest.raises(ValueError, match="both"):
        Transport("tcp://127.0.0.1:1", run="r", client_public_key=client_public)


def test_bad_arguments_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="run"):
        Transport("tcp://127.0.0.1:1", run="bad run name")
    with pytest.raises(ValueError, match="rank"):
        Transport("tcp://127.0.0.1:1", run="r", rank=2, world_size=2)
    with pytest.raises(zmq.ZMQError):
        Transport("not-an-endpoint", run="r")


def test_server_restarts_mid_stream_lose_nothing(make: Callable[..., Transport],
                                                 tmp_path: Path) -> None:
    peer = Peer().start()
    t = make(peer.endpoint, spool_dir=tmp_path, resend_after=0.2)
    step = 0
    try:
        for _ in range(3):  # stream, crash the server (unacked frames die with it), restart
            for _ in range(20):
                t.submit([_rec(step)])
                step += 1
                time.sleep(0.002)
            peer.stop()
            for _ in range(10):
                t.submit([_rec(step)])
                step += 1
            time.sleep(0.1)
            peer.start()
        assert _wait(lambda: t.counters().acked == step, 20)
        assert sorted(set(peer.seqs(t.session))) == list(range(1, step + 1))
        assert sorted(_steps(peer.first_seen(t.session))) == list(range(step))
        c = t.counters()
        assert (c.dropped, c.rejected, c.in_flight, c.spool_pending) == (0, 0, 0, 0)
        assert c.spooled > 0
    finally:
        peer.stop()
