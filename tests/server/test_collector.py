"""The collector with real ZeroMQ DEALER sockets on 127.0.0.1 and a real store."""

from __future__ import annotations

import math
import time
import uuid
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import sqlalchemy
import zmq
import zmq.auth

from spikewatch.protocol import wire
from spikewatch.protocol.names import Combine
from spikewatch.server._stats import Stats
from spikewatch.server.collector import Collector, CurveConfig, wait_until
from spikewatch.server.store import Store, WriteResult


class Agent:
    """A minimal agent: one DEALER socket, sends frames and reads replies with a timeout."""

    def __init__(self, endpoint: str, run: str = "r1", rank: int = 0, world: int = 1,
                 curve: tuple[bytes, bytes, bytes] | None = None) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVTIMEO, 5000)
        if curve is not None:
            self.sock.curve_serverkey, self.sock.curve_publickey, self.sock.curve_secretkey = curve
        self.sock.connect(endpoint)
        self.session, self.run, self.rank, self.world = uuid.uuid4().hex, run, rank, world

    def header(self, seq: int) -> wire.Header:
        return wire.Header(self.session, seq, self.run, self.rank, self.world, time.time())

    def send(self, msg: wire.Hello | wire.Batch) -> None:
        self.sock.send(wire.encode(msg))

    def reply(self) -> wire.Ack | wire.Nack:
        r = wire.decode_reply(self.sock.recv())
        assert not isinstance(r, wire.Alert), "no rules run here: no alert replies"
        return r

    def acked(self, n: int) -> set[int]:
        """Seqs acknowledged in the next replies until `n` seqs were seen."""
        seqs: set[int] = set()
        while len(seqs) < n:
            r = self.reply()
            assert isinstance(r, wire.Ack)
            assert r.session == self.session
            seqs.update(r.seqs)
        return seqs

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


@pytest.fixture
def stats() -> Stats:
    return Stats()


@pytest.fixture
def committed() -> list[WriteResult]:
    return []


@pytest.fixture
def collector(sqlite_store: Store, stats: Stats, committed: list[WriteResult]
              ) -> Iterator[Collector]:
    def hook(results: Sequence[WriteResult]) -> None:
        committed.extend(results)

    c = Collector(sqlite_store, stats, "tcp://127.0.0.1:*", on_commit=hook, queue_size=4)
    c.start()
    yield c
    c.stop()


@pytest.fixture
def agent(collector: Collector) -> Iterator[Agent]:
    assert collector.bound_endpoint is not None
    a = Agent(collector.bound_endpoint)
    yield a
    a.close()


def rec(step: int, **scalars: float) -> wire.Record:
    return wire.Record(step, 1000.0 + step, scalars)


def test_ack_only_after_commit(agent: Agent, sqlite_store: Store, stats: Stats) -> None:
    agent.send(wire.Hello(agent.header(1), {"optimizer": "Adam"}))
    agent.send(wire.Batch(agent.header(2), (rec(1, loss=1.0), rec(2, loss=math.nan))))
    assert agent.acked(2) == {1, 2}
    # the ack implies the commit: a separate connection already sees the rows
    pts = sqlite_store.series("r1", "loss")
    assert [p.step for p in pts] == [1, 2]
    assert math.isnan(pts[1].value)
    snap = stats.snapshot()
    assert snap.received == {"hello": 1, "batch": 1}
    assert snap.points_written == 2
    assert snap.write_latency_count >= 1
    assert snap.collector_running


def test_resent_seqs_are_deduplicated(agent: Agent, sqlite_store: Store, stats: Stats) -> None:
    msg = wire.Batch(agent.header(1), (rec(1, loss=1.0),))
    agent.send(msg)
    assert agent.acked(1) == {1}
    agent.send(msg)  # e.g. the first ack was lost
    agent.send(wire.Batch(agent.header(2), (rec(2, loss=2.0),)))
    agent.send(msg)
    assert agent.acked(2) == {1, 2}
    assert wait_until(lambda: stats.snapshot().deduplicated == 2, 5)
    assert [p.value for p in sqlite_store.series("r1", "loss")] == [1.0, 2.0]


def test_malformed_frames_are_nacked_and_counted(agent: Agent, stats: Stats,
                                                 sqlite_store: Store) -> None:
    agent.sock.send(b"not a spikewatch frame")
    r = agent.reply()
    assert isinstance(r, wire.Nack)
    assert r.reason == "bad_header"
    # valid envelope, invalid content: the nack names the message
    body = (b'{"type":"batch","session":"%s","seq":7,"run":"bad run!","rank":0,'
            b'"world_size":1,"sent_at":0,"records":[]}' % agent.session.encode())
    agent.sock.send(wire.MAGIC + bytes((wire.VERSION, 0)) + body)
    r = agent.reply()
    assert isinstance(r, wire.Nack)
    assert (r.session, r.seq, r.reason) == (agent.session, 7,
                                                                         "bad_name")
    agent.sock.send(wire.MAGIC + bytes((99, 0)) + b"{}")
    r = agent.reply()
    assert isinstance(r, wire.Nack)
    assert r.reason == "bad_version"
    big = wire.MAGIC + bytes((wire.VERSION, wire.FLAG_ZLIB)) + zlib.compress(b"x") + bytes(
        wire.MAX_FRAME_BYTES)
    agent.sock.send(big)
    r = agent.reply()
    assert isinstance(r, wire.Nack)
    assert r.reason == "oversize"
    agent.sock.send_multipart([b"two", b"frames", b"here"])
    r = agent.reply()
    assert isinstance(r, wire.Nack)
    assert r.reason == "bad_header"
    agent.send(wire.Batch(agent.header(9), (wire.Record(1, math.nan, {"loss": 1.0}),)))
    r = agent.reply()
    assert isinstance(r, wire.Nack)
    assert (r.seq, r.reason) == (9, "bad_value")  # a step without a time cannot be indexed
    assert stats.snapshot().invalid == {"bad_header": 2, "bad_name": 1, "bad_version": 1,
                                        "oversize": 1, "bad_value": 1}
    assert sqlite_store.list_runs() == []  # nothing malformed stored
    # the socket still works after all that
    agent.send(wire.Batch(agent.header(1), (rec(1, loss=1.0),)))
    assert agent.acked(1) == {1}


def test_partials_from_two_ranks_are_combined(collector: Collector, sqlite_store: Store,
                                              committed: list[WriteResult]) -> None:
    assert collector.bound_endpoint is not None
    ranks = [Agent(collector.bound_endpoint, "dist", rank=r, world=2) for r in (0, 1)]
    try:
        sq = {0: (4.0, 1.0), 1: (12.0, 1.0)}  # Σg² and Σv̂ per shard
        for r, a in enumerate(ranks):
            num, den = sq[r]
            scalars = {"loss": 0.5} if r == 0 else {}
            a.send(wire.Batch(a.header(1), (wire.Record(
                5, 1.0, scalars, partials={"rho": wire.Partial(Combine.SQRT_RATIO, num, den),
                                           "grad_spike_share": wire.Partial(Combine.MAX, r / 4)}),
            )))
            assert a.acked(1) == {1}
    finally:
        for a in ranks:
            a.close()
    assert sqlite_store.series("dist", "rho")[0].value == math.sqrt(16.0 / 2.0)
    assert sqlite_store.series("dist", "grad_spike_share")[0].value == 0.25
    values: dict[str, float] = {}
    for res in committed:
        for obs in res.observations:
            assert obs.run == "dist"
            assert obs.step == 5
            values.update(obs.values)
    assert values == {"loss": 0.5, "rho": math.sqrt(8.0), "grad_spike_share": 0.25}


def test_message_the_database_refuses_is_nacked_others_acked(
    sqlite_store: Store, stats: Stats, sqlite_url: str
) -> None:
    engine = sqlalchemy.create_engine(sqlite_url)
    with engine.begin() as conn:  # a real refusal by the database for one metric name
        conn.exec_driver_sql("CREATE TRIGGER refuse BEFORE INSERT ON scalars "
                             "WHEN NEW.metric = 'poison' BEGIN SELECT RAISE(ABORT, 'no'); END")
    engine.dispose()
    c = Collector(sqlite_store, stats, "tcp://127.0.0.1:*", batch_max_wait_s=0.2)
    c.start()
    assert c.bound_endpoint is not None
    a = Agent(c.bound_endpoint)
    try:
        a.send(wire.Batch(a.header(1), (rec(1, loss=1.0),)))
        a.send(wire.Batch(a.header(2), (rec(2, poison=1.0),)))
        a.send(wire.Batch(a.header(3), (rec(3, loss=3.0),)))
        acked: set[int] = set()
        nacked: list[tuple[int, str]] = []
        while len(acked) + len(nacked) < 3:
            r = a.reply()
            if isinstance(r, wire.Ack):
                acked.update(r.seqs)
            else:
                nacked.append((r.seq, r.reason))
    finally:
        a.close()
        c.stop()
    assert acked == {1, 3}
    assert nacked == [(2, "bad_value")]
    assert [p.step for p in sqlite_store.series("r1", "loss")] == [1, 3]
    assert stats.snapshot().invalid == {"bad_value": 1}


def test_back_pressure_loses_nothing(agent: Agent, sqlite_store: Store) -> None:
    n = 60  # the queue holds 4: the collector must stop reading, not drop
    for seq in range(1, n + 1):
        agent.send(wire.Batch(agent.header(seq), (rec(seq, loss=float(seq)),)))
    assert agent.acked(n) == set(range(1, n + 1))
    assert [p.step for p in sqlite_store.series("r1", "loss")] == list(range(1, n + 1))


def test_stop_drains_queue_and_acks(sqlite_store: Store, stats: Stats) -> None:
    c = Collector(sqlite_store, stats, "tcp://127.0.0.1:*", batch_max_wait_s=0.05)
    c.start()
    assert c.bound_endpoint is not None
    a = Agent(c.bound_endpoint)
    try:
        for seq in range(1, 21):
            a.send(wire.Batch(a.header(seq), (rec(seq, loss=1.0),)))
        assert wait_until(lambda: sum(stats.snapshot().received.values()) == 20, 10)
        c.stop()  # messages still queued must be written and acknowledged
        assert not c.running
        assert a.acked(20) == set(range(1, 21))
        assert len(sqlite_store.series("r1", "loss")) == 20
    finally:
        a.close()


def test_bind_failure_is_reported(sqlite_store: Store) -> None:
    c = Collector(sqlite_store, Stats(), "tcp://256.0.0.1:1")
    with pytest.raises(RuntimeError, match="could not bind"):
        c.start()
    c.stop()  # harmless after a failed start


def test_curve_allow_list(tmp_path: Path, sqlite_store: Store, stats: Stats) -> None:
    server_pub, server_sec = zmq.auth.create_certificates(tmp_path, "server")
    good_pub, good_sec = zmq.auth.create_certificates(tmp_path, "good")
    _bad_pub, bad_sec = zmq.auth.create_certificates(tmp_path, "bad")
    allowed = tmp_path / "allowed"
    allowed.write_text("# agents\n" + zmq.auth.load_certificate(good_pub)[0].decode() + "\n")
    c = Collector(sqlite_store, stats, "tcp://127.0.0.1:*",
                  curve=CurveConfig(Path(server_sec), allowed))
    c.start()
    assert c.bound_endpoint is not None
    srv = zmq.auth.load_certificate(server_pub)[0]
    good = Agent(c.bound_endpoint, curve=(srv, *zmq.auth.load_certificate(good_sec)))  # type: ignore[arg-type]
    bad = Agent(c.bound_endpoint, run="intruder",
                curve=(srv, *zmq.auth.load_certificate(bad_sec)))  # type: ignore[arg-type]
    plain = Agent(c.bound_endpoint, run="plain")
    try:
        for a in (good, bad, plain):
            a.send(wire.Batch(a.header(1), (rec(1, loss=1.0),)))
        assert good.acked(1) == {1}
        bad.sock.setsockopt(zmq.RCVTIMEO, 500)
        plain.sock.setsockopt(zmq.RCVTIMEO, 200)
        with pytest.raises(zmq.Again):
            bad.reply()
        with pytest.raises(zmq.Again):
            plain.reply()
        assert stats.snapshot().unauthenticated >= 1
        assert [r.name for r in sqlite_store.list_runs()] == ["r1"]
    finally:
        for a in (good, bad, plain):
            a.close()
        c.stop()
