"""The collector's writer thread: queued messages → one transaction → acks, after the commit.

It gathers messages into one transaction (up to `batch_max_messages`, or what arrives within
`batch_max_wait_s`), commits, then acks each message (duplicates too: they are stored) and calls
`on_commit` with the results (rules, notifications). Replies go to the I/O thread over an inproc
PUSH socket (the ROUTER is the I/O thread's alone); `b"done"` there says the writer has finished.
Nothing is acknowledged before its transaction committed; a failed transaction acks nothing and
the agents resend. A message the database refuses on its own is nacked.
"""

from __future__ import annotations

import logging
import queue
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import zmq
from sqlalchemy.exc import DataError, IntegrityError

from spikewatch.protocol import wire
from spikewatch.server._stats import Stats
from spikewatch.server.store import Store, WriteResult

log = logging.getLogger("spikewatch.server.collector")

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


class IngestWriter:
    """Writes what the I/O thread queues and sends the replies to `reply_endpoint` (inproc)."""

    def __init__(self, store: Store, stats: Stats, items: queue.Queue[Any], *,
                 ctx: zmq.Context[zmq.Socket[bytes]], reply_endpoint: str,
                 batch_max_messages: int, batch_max_wait_s: float,
                 on_commit: Callable[[Sequence[WriteResult]], None] | None) -> None:
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
                self._on_commit([res for _, res in done])
            except Exception:
                log.exception("post-commit hook failed (data is stored and acknowledged)")
