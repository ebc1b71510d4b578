"""Fork safety: a forked child never touches the parent's ZeroMQ context; the parent streams on."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest

from spikewatch.agent._transport import Transport
from spikewatch.protocol import wire
from tests.agent._peer import Peer


def _rec(step: int) -> wire.Record:
    return wire.Record(step=step, time=float(step), scalars={"loss": 1.0})


def _wait_child(pid: int, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    raise AssertionError("forked child hung")


def _child_checks(t: Transport) -> int:
    """Runs in the child: everything is a bounded no-op that counts drops."""
    ok = t.submit([_rec(-1)])
    hello = t.hello({"child": True})
    flushed = t.flush(1.0)
    t0 = time.monotonic()
    t.close(timeout=5.0)
    fast = time.monotonic() - t0 < 1.0
    c = t.counters()
    return 0 if (not ok and not hello and flushed and fast and c.dropped >= 2) else 1


def test_forked_child_is_disabled_and_parent_keeps_streaming(peer: Peer) -> None:
    t = Transport(peer.endpoint, run="fork", resend_after=0.3, linger_ms=0)
    try:
        t.submit([_rec(0)])
        assert t.flush(5)
        stop = threading.Event()

        def hammer() -> None:  # the parent's threads are mid-submit while it forks
            i = 1000
            while not stop.is_set():
                t.submit([_rec(i)])
                i += 1
                time.sleep(0.001)

        th = threading.Thread(target=hammer)
        th.start()
        try:
            for _ in range(5):
                pid = os.fork()
                if pid == 0:  # pragma: no cover - child
                    code = 3
                    try:
                        code = _child_checks(t)
                    finally:
                        os._exit(code)
                assert _wait_child(pid) == 0
        finally:
            stop.set()
            th.join(10)
        t.submit([_rec(1)])
        assert t.flush(5)
        steps = [r.step for m in peer.first_seen(t.session) if isinstance(m, wire.Batch)
                 for r in m.records]
        assert -1 not in steps
        assert steps[0] == 0
        assert steps[-1] == 1
        assert steps == [0, *sorted(steps[1:-1]), 1]
        c = t.counters()
        assert c.dropped == 0
        assert c.acked == c.submitted
        assert all(m.header.session == t.session for m in peer.messages())
    finally:
        t.close(timeout=2.0)


def test_dataloader_fork_workers(peer: Peer) -> None:
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, Dataset

    t = Transport(peer.endpoint, run="loader", resend_after=0.3, linger_ms=0)

    class Submitting(Dataset[Any]):
        def __len__(self) -> int:
            return 8

        def __getitem__(self, i: int) -> Any:
            accepted = t.submit([_rec(100 + i)])  # inside a forked worker
            return torch.tensor([i, int(accepted), os.getpid()])

    try:
        t.hello({"workers": 2})
        loader = DataLoader(Submitting(), batch_size=2, num_workers=2,
                            multiprocessing_context="fork")
        rows = torch.cat(list(loader)).tolist()
        assert sorted(r[0] for r in rows) == list(range(8))
        assert all(r[1] == 0 for r in rows)  # workers' submits were refused, not sent
        assert {r[2] for r in rows} - {os.getpid()}  # they really ran in other processes
        for step in range(3):
            assert t.submit([_rec(step)])
        assert t.flush(5)
        assert peer.wait_for(lambda: len(peer.seqs(t.session)) == 4)
        steps = [r.step for m in peer.first_seen() if isinstance(m, wire.Batch)
                 for r in m.records]
        assert steps == [0, 1, 2]
        assert t.counters().dropped == 0
    finally:
        t.close(timeout=2.0)
