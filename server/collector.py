"""ZeroMQ ingest: a ROUTER socket, a bounded queue and a writer that acknowledges after commit.

Threads:

* the I/O thread owns the ROUTER socket (pyzmq sockets are not thread-safe): it decodes frames,
  nacks invalid ones (counted by `WireError.reason`), puts valid messages on a bounded queue and
  forwards replies the writer hands it over an inproc PULL socket. When the queue is full it stops
  reading the ROUTER (back-pressure lands in the agents' own bounded queues).
* the writer thread (`IngestWriter`) gathers messages into one transaction (up to
  `batch_max_messages`, or what arrives within `batch_max_wait_s`), commits, then acks each
  message (duplicates too: they are stored) and calls `on_commit` with the results (rules,
  notifications). The alerts that commit started or ended (`on_commit`'s return) go back to the
  agents of their run in it as `alert` replies, so the job hears of its own pages.

With CURVE on (`CurveConfig`, `server._collector_auth`) the socket is encrypted and only allowed
agent keys are admitted.

Nothing is acknowledged before its transaction committed; a failed transaction acks nothing and
the agents resend. `stop()` stops reading, drains the queue, commits, acks and closes.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import zmq
from sqlalchemy.exc import DataError, IntegrityError
from zmq.auth.thread import ThreadAuthenticator

from spikewatch.protocol import wire
from spikewatch.server._cardinality import Cardinality, Limits
from spikewatch.server._collector_auth import (
    CurveConfig,
    count_refused_handshakes,
    handshake_monitor,
    make_curve_server,
    start_authenticator,
)
from spikewatch.server._stats import Stats
from spikewatch.server.store import Store, WriteResult
from spikewatch.server.types import AlertState, Transition

__all__ = ["Collector", "CurveConfig", "wait_until"]

log = logging.getLogger(__name__)

_NO_SESSION = "0" * 32


def _check_storable(msg: wire.Hello | wire.Batch) -> None:
    """What the wire format allows but the store cannot index: a non-finite record time."""
    if isinstance(msg, wire.Batch):
        for r in msg.records:
            if not math.isfinite(r.time):
                raise wire.WireError("bad_value", f"record time at step {r.step} is not finite")


STOP: Final = object()
"""Queued after the last message: the writer drains up to it and finishes."""
DONE: Final = [b"done"]
"""Sent on the reply socket when the writer has finished."""
_MAX_ACK_SEQS: Final = 4096  # an Ack carries at most this many seqs


@dataclass(slots=True)
class Item:
    """A decoded message and the ROUTER envelope its reply goes back to."""

    envelope: list[bytes]
    msg: wire.Hello | wire.Batch


OnCommit = Callable[[Sequence[WriteResult]], Sequence[Transition] | None]


class IngestWriter:
    """Writes what the I/O thread queues and sends the replies to `reply_endpoint` (inproc)."""

    def __init__(self, store: Store, stats: Stats, items: queue.Queue[Any], *,
                 ctx: zmq.Context[zmq.Socket[bytes]], reply_endpoint: str,
                 batch_max_messages: int, batch_max_wait_s: float,
                 on_commit: OnCommit | None) -> None:
        self.store, self.stats = store, stats
        self._q = items
        self._ctx, self._reply_endpoint = ctx, reply_endpoint
        self._batch_n, self._batch_wait = batch_max_messages, batch_max_wait_s
        self._on_commit = on_commit

    def run(self) -> None:
        """The thread's body: write until `STOP`, then say `DONE`."""
        push: zmq.Socket[bytes] = self._ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.SNDHWM, 0)
        push.connect(self._reply_endpoint)
        try:
            stop = False
            while not stop:
                items, stop = self._gather()
                if items:
                    self._commit(items, push)
                self.stats.set_queue_depth(self._q.qsize())
        finally:
            push.send_multipart(DONE)
            push.close()

    def _gather(self) -> tuple[list[Item], bool]:
        """Block for one message, then collect what arrives within the batch window."""
        first = self._q.get()
        if first is STOP:
            return [], True
        items: list[Item] = [first]
        deadline = time.monotonic() + self._batch_wait
        while len(items) < self._batch_n:
            left = deadline - time.monotonic()
            try:
                nxt = self._q.get_nowait() if left <= 0 else self._q.get(timeout=left)
            except queue.Empty:
                break
            if nxt is STOP:
                return items, True
            items.append(nxt)
        return items, False

    def _write(self, items: list[Item], push: zmq.Socket[bytes]) -> list[tuple[Item, WriteResult]]:
        msgs = [it.msg for it in items]
        try:
            return list(zip(items, self.store.write_many(msgs), strict=True))
        except Exception as e:
            if len(items) == 1:
                h = items[0].msg.header
                if isinstance(e, DataError | IntegrityError):  # the database refuses this one
                    log.error("message %s/%d refused by the database (nacked): %s", h.session,
                              h.seq, str(e.orig)[:200])
                    self.stats.message_invalid("bad_value")
                    nack = wire.Nack(h.session, h.seq, "bad_value")
                    push.send_multipart([*items[0].envelope, wire.encode(nack)])
                else:
                    log.exception("write failed; message %s/%d not acknowledged (the agent "
                                  "resends it)", h.session, h.seq)
                return []
            log.warning("transaction of %d messages failed; writing one by one", len(items),
                        exc_info=True)
        out: list[tuple[Item, WriteResult]] = []
        for it in items:
            out.extend(self._write([it], push))
        return out

    def _commit(self, items: list[Item], push: zmq.Socket[bytes]) -> None:
        t0 = time.perf_counter()
        done = self._write(items, push)
        if not done:
            return
        self.stats.write_latency(time.perf_counter() - t0)
        acks: dict[tuple[tuple[bytes, ...], str], list[int]] = defaultdict(list)
        dups = points = 0
        for it, res in done:
            acks[(tuple(it.envelope), it.msg.header.session)].append(it.msg.header.seq)
            dups += res.duplicate
            points += res.points
        if dups:
            self.stats.message_deduplicated(dups)
        self.stats.points_written(points)
        for (envelope, session), seqs in acks.items():
            for i in range(0, len(seqs), _MAX_ACK_SEQS):
                ack = wire.Ack(session, tuple(seqs[i:i + _MAX_ACK_SEQS]))
                push.send_multipart([*envelope, wire.encode(ack)])
        if self._on_commit is not None:
            try:
                transitions = self._on_commit([res for _, res in done])
            except Exception:
                log.exception("post-commit hook failed (data is stored and acknowledged)")
                return
            _tell_agents(transitions or (), [it for it, _ in done], push)


def _tell_agents(transitions: Sequence[Transition], items: Sequence[Item],
                 push: zmq.Socket[bytes]) -> None:
    """Send each alert that started or stopped firing to every session of its run among the
    messages that decided it (each rank of the run hears of it)."""
    if not transitions:  # most commits change no alert
        return
    told = {AlertState.FIRING, AlertState.RESOLVED}
    to: dict[str, dict[str, tuple[bytes, ...]]] = defaultdict(dict)  # run → session → envelope
    for it in items:
        h = it.msg.header
        to[h.run][h.session] = tuple(it.envelope)
    for t in transitions:
        if t.state not in told:
            continue
        for session, envelope in to.get(t.run, {}).items():
            alert = wire.Alert(session, t.run, t.rule, t.severity.value, t.state.value, t.step,
                               t.value, t.annotations.get("summary", ""))
            try:
                push.send_multipart([*envelope, wire.encode(alert)])
            except (ValueError, zmq.ZMQError):
                log.warning("could not tell run %s of alert %s", t.run, t.rule, exc_info=True)


class Collector:
    """Receives agent messages on `endpoint` and writes them to `store`."""

    def __init__(self, store: Store, stats: Stats, endpoint: str, *,
                 queue_size: int = 10000, batch_max_messages: int = 512,
                 batch_max_wait_s: float = 0.005, max_frame_bytes: int = wire.MAX_FRAME_BYTES,
                 on_commit: OnCommit | None = None,
                 curve: CurveConfig | None = None, limits: Limits | None = None) -> None:
        self.store, self.stats = store, stats
        self._limits = limits or Limits()
        self._cardinality: Cardinality | None = None
        self._endpoint = endpoint
        self.bound_endpoint: str | None = None
        self._q: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._max_frame = min(max_frame_bytes, wire.MAX_FRAME_BYTES)
        self._curve = curve
        self._ctx = zmq.Context()
        self._inproc = f"inproc://spikewatch-replies-{uuid.uuid4().hex}"
        self._accepting = threading.Event()
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._auth: ThreadAuthenticator | None = None
        self._io = threading.Thread(target=self._io_loop, name="spikewatch-collector", daemon=True)
        writer = IngestWriter(store, stats, self._q, ctx=self._ctx, reply_endpoint=self._inproc,
                              batch_max_messages=batch_max_messages,
                              batch_max_wait_s=batch_max_wait_s, on_commit=on_commit)
        self._writer = threading.Thread(target=writer.run, name="spikewatch-writer", daemon=True)

    # --- lifecycle -----------------------------------------------------------------------------

    def _stored_runs(self) -> list[str]:
        return [r.name for r in self.store.list_runs()]

    def start(self, timeout: float = 10.0) -> None:
        """Bind and start both threads; raises if the endpoint cannot be bound."""
        self._cardinality = Cardinality(self._limits, self.stats, self._stored_runs)
        if self._curve is not None:
            self._auth = start_authenticator(self._ctx, self._curve, self.stats)
        self._accepting.set()
        self._io.start()
        if not self._ready.wait(timeout) or self._start_error is not None:
            self._accepting.clear()
            self._io.join(timeout)
            self._close_ctx()
            raise RuntimeError(f"collector could not bind {self._endpoint}: "
                               f"{self._start_error}") from self._start_error
        self._writer.start()
        self.stats.collector_running = True

    @property
    def running(self) -> bool:
        return self._io.is_alive() and self._writer.is_alive() and self._accepting.is_set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop reading new frames, write and ack everything queued, then close."""
        if not self._io.is_alive():
            self._close_ctx()
            return
        self._accepting.clear()  # the I/O thread queues _STOP after its last message
        self._writer.join(timeout)
        self._io.join(timeout)
        self.stats.collector_running = False
        self._close_ctx()

    def _close_ctx(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if not self._ctx.closed:
            self._ctx.term()

    # --- I/O thread ----------------------------------------------------------------------------

    def _bind(self) -> zmq.Socket[bytes]:
        router: zmq.Socket[bytes] = self._ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 2000)
        router.setsockopt(zmq.MAXMSGSIZE, 2 * self._max_frame + 4096)
        router.setsockopt(zmq.RCVHWM, 10000)
        if self._curve is not None:
            make_curve_server(router, self._curve)
        try:
            router.bind(self._endpoint)
        except zmq.ZMQError:
            router.close(0)
            raise
        self.bound_endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
        return router

    def _io_loop(self) -> None:
        replies: zmq.Socket[bytes] = self._ctx.socket(zmq.PULL)
        replies.setsockopt(zmq.RCVHWM, 0)
        replies.bind(self._inproc)
        try:
            router = self._bind()
        except Exception as e:  # reported to start()
            self._start_error = e
            replies.close(0)
            self._ready.set()
            return
        self._ready.set()
        poller = zmq.Poller()
        poller.register(replies, zmq.POLLIN)
        # with CURVE on, failed handshakes of non-CURVE agents are counted from a monitor
        monitor = handshake_monitor(router) if self._curve is not None else None
        if monitor is not None:
            poller.register(monitor, zmq.POLLIN)
        reading = False
        pending: Any = None  # an Item (or STOP) waiting for room in the queue
        stop_sent = False
        try:
            while True:
                accepting = self._accepting.is_set()
                if pending is not None:
                    try:
                        self._q.put_nowait(pending)
                        pending = None
                    except queue.Full:
                        pass
                want = accepting and pending is None
                if want != reading:
                    if want:
                        poller.register(router, zmq.POLLIN)
                    else:
                        poller.unregister(router)
                    reading = want
                if not accepting and pending is None and not stop_sent:
                    pending = STOP  # after the last message; the writer drains up to it
                    stop_sent = True
                    continue
                self.stats.set_queue_depth(self._q.qsize())
                events = dict(poller.poll(10 if pending is not None else 100))
                while replies in events:
                    try:
                        parts = replies.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if parts == DONE:
                        return
                    router.send_multipart(parts)
                if router in events and reading:
                    pending = self._receive(router)
                if monitor is not None and monitor in events:
                    count_refused_handshakes(monitor, self.stats)
        finally:
            if monitor is not None:
                router.disable_monitor()
                monitor.close(0)
            router.close()  # LINGER lets the last acks out
            replies.close(0)

    def _receive(self, router: zmq.Socket[bytes]) -> Item | None:
        """Read one frame: a queued item, or None after a nack."""
        parts = router.recv_multipart()
        envelope, rest = parts[:1], parts[1:]
        if len(rest) == 2 and rest[0] == b"":
            envelope, rest = parts[:2], parts[2:]
        frame = rest[0] if len(rest) == 1 else b""
        try:
            if len(rest) != 1:
                raise wire.WireError("bad_header", f"expected one frame, got {len(rest)}")
            if len(frame) > self._max_frame:
                raise wire.WireError("oversize", f"frame of {len(frame)} bytes")
            msg = wire.decode(frame)
            _check_storable(msg)
            if self._cardinality is not None:
                msg = self._cardinality.admit(msg)
        except wire.WireError as e:
            self.stats.message_invalid(e.reason)
            small = len(frame) <= wire.MAX_FRAME_BYTES
            session, seq = (wire.message_id(frame) if small else None) or (_NO_SESSION, 1)
            router.send_multipart([*envelope, wire.encode(wire.Nack(session, seq, e.reason))])
            return None
        self.stats.message_received(msg.type)
        return Item(envelope, msg)


def wait_until(pred: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    """Poll `pred` until true or `timeout` seconds passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


