"""The transport's sender thread: the only code that touches the socket and the spool.

One loop, woken by a reply, a submit (when idle), a timer or close: drain the queue, encode
(splitting oversize batches), send within the in-flight window or spool, replay the spool in order
once the server answers, re-send on a backoff schedule, go offline when nothing is acknowledged,
probe when a server connects, fsync the spool about once a second, publish the counters.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import zmq

from spikewatch.agent._counters import TransportCounters
from spikewatch.agent._spool import Entry, Spool
from spikewatch.protocol import wire

if TYPE_CHECKING:
    from spikewatch.agent._transport import Transport

log = logging.getLogger("spikewatch.agent.transport")

MAX_BACKOFF: Final = 10.0  # seconds between re-sends of one message, at most
PROBE_INTERVAL: Final = 0.5  # seconds between probes; a (re)connection triggers one at once
SYNC_INTERVAL: Final = 1.0  # seconds between fsyncs of a dirty spool
DRAIN_INTERVAL: Final = 0.02  # seconds between queue drains while submits keep coming
MEMORY_SPOOL_MAX: Final = 32 << 20  # bytes held in memory when there is no spool_dir
_MAX_POLL: Final = 0.5


@dataclass(slots=True)
class Out:
    """An encoded message awaiting acknowledgement."""

    session: str
    seq: int
    prio: int
    frame: bytes
    first_sent: float = 0.0
    last_sent: float = 0.0
    attempts: int = 0
    entry: Entry | None = None  # its spool entry, once spooled


@dataclass(slots=True)
class HelloItem:
    """A queued hello; encoded (and given its seq) by the sender like a batch."""

    meta: Mapping[str, wire.Scalar]


Item = HelloItem | tuple[wire.Record, ...]  # what the training thread queues


class Sender:
    """The sender thread's state and loop; only this thread touches the socket and the spool."""

    def __init__(self, t: Transport) -> None:
        self.t = t
        self.spool: Spool | None = None
        self.next_seq = 1
        self.spool_on_disk = False
        self.in_flight: dict[tuple[str, int], Out] = {}
        self.online = True
        self.last_ack = time.monotonic()
        self.next_probe = 0.0
        self.next_resend = 0.0
        self.next_sync = 0.0
        self.cpu0 = 0.0
        self.busy = False
        self.c = {k: 0 for k in ("sent", "acked", "resent", "spooled", "replayed", "dropped",
                                 "rejected", "oversize")}

    def _encode(self, item: Item) -> list[tuple[int, bytes]]:
        """Frames for one queued item, each with the next seq; drops what cannot be encoded.

        A batch over `wire.MAX_RECORDS` or `wire.MAX_FRAME_BYTES` is split in order; a single
        record too large for a frame is dropped and counted (`oversize`, `dropped`).
        """
        t = self.t
        if isinstance(item, HelloItem):
            try:
                frame = wire.encode(wire.Hello(t._header(self.next_seq), item.meta))
            except Exception:
                log.warning("hello metadata could not be encoded; dropped", exc_info=True)
                self.c["dropped"] += 1
                return []
            self.next_seq += 1
            return [(self.next_seq - 1, frame)]
        frames: list[tuple[int, bytes]] = []
        pending = [item[i:i + wire.MAX_RECORDS] for i in range(0, len(item), wire.MAX_RECORDS)]
        while pending:
            chunk = pending.pop(0)
            try:
                frame = wire.encode(wire.Batch(t._header(self.next_seq), chunk))
            except Exception as e:
                if len(chunk) > 1:  # too large (or one bad record): split in halves, keep order
                    half = len(chunk) // 2
                    pending[:0] = [chunk[:half], chunk[half:]]
                    continue
                self.c["dropped"] += 1
                if isinstance(e, ValueError) and "exceeds" in str(e):
                    self.c["oversize"] += 1
                else:
                    log.warning("record could not be encoded; dropped: %r", e)
                continue
            frames.append((self.next_seq, frame))
            self.next_seq += 1
        return frames

    # --- lifecycle -----------------------------------------------------------------------------

    def run(self) -> None:
        t = self.t
        with contextlib.suppress(OSError, AttributeError):
            # run in the training step's gaps: a lower priority thread steals no core from it
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + 10))
        try:
            self.spool = self._open_spool()
            poller = zmq.Poller()
            poller.register(t._sock, zmq.POLLIN)
            poller.register(t._wake_r, zmq.POLLIN)
            zmq.select([], [t._sock], [], 0.2)  # give the first connect a moment (IMMEDIATE)
            watching_out = False
            self.cpu0 = time.thread_time()
            while True:
                # Offline with nothing out: with IMMEDIATE the socket turns writable exactly when
                # a server connects, which is the moment to probe; no busy polling meanwhile.
                want_out = self._wants_connection()
                if want_out != watching_out:
                    poller.modify(t._sock, zmq.POLLIN | (zmq.POLLOUT if want_out else 0))
                    watching_out = want_out
                timeout = self._poll_timeout(time.monotonic())
                events = dict(poller.poll(int(timeout * 1000)))
                if t._wake_r in events:
                    with contextlib.suppress(OSError):
                        os.read(t._wake_r, 4096)
                flags = events.get(t._sock, 0)
                if flags & zmq.POLLIN:
                    self._read_replies()
                if flags & zmq.POLLOUT:
                    self.next_probe = 0.0
                if self._step():
                    break
        except Exception:
            log.exception("spikewatch transport sender failed; further data is dropped")
        finally:
            self._shutdown()

    def _open_spool(self) -> Spool:
        t = self.t
        if t.spool_dir is not None:
            try:
                spool = Spool(t.spool_dir, t.session, max_bytes=t.max_spool_bytes)
                self.spool_on_disk = True
                return spool
            except OSError:
                log.warning("spool directory %s unusable; spooling in memory", t.spool_dir,
                            exc_info=True)
        return Spool(None, t.session, max_bytes=min(t.max_spool_bytes, MEMORY_SPOOL_MAX))

    def _wants_connection(self) -> bool:
        spool = self.spool
        return (not self.online and not self.in_flight and spool is not None
                and spool.has_pending())

    def _poll_timeout(self, now: float) -> float:
        due = now + (DRAIN_INTERVAL if self.busy else _MAX_POLL)
        if self.in_flight:
            due = min(due, self.next_resend)
        if not self.online and self.spool is not None and self.spool.has_pending():
            due = min(due, self.next_probe)
        if self.t._closing_deadline is not None:
            due = min(due, self.t._give_up_at)
        return max(0.0, due - now)

    def _shutdown(self) -> None:
        t = self.t
        spool = self.spool
        try:
            for out in list(self.in_flight.values()):
                self._to_spool(out)
            self.in_flight.clear()
            with t._lock:
                rest = t._queue.take_all()
            for prio, item in rest:  # close() raced a submit, or the loop failed
                for seq, frame in self._encode(item):
                    self._to_spool(Out(t.session, seq, prio, frame))
            if spool is not None:
                left = spool.pending
                if not self.spool_on_disk:  # memory: lost with the process
                    self.c["dropped"] += left
                spool.close()
                if left and self.spool_on_disk:
                    log.warning("spikewatch transport: %d message(s) not acknowledged by the "
                                "server at close are kept in the spool %s; the next transport "
                                "on this spool_dir delivers them", left, t.spool_dir)
                elif left:
                    log.warning("spikewatch transport: %d message(s) not acknowledged by the "
                                "server at close are lost (no spool_dir; counted as dropped)",
                                left)
        except Exception:
            log.exception("spikewatch transport shutdown failed")
        finally:
            deadline = t._closing_deadline
            left_ms = int(1000 * (deadline - time.monotonic())) if deadline else t.linger_ms
            with contextlib.suppress(Exception):
                t._sock.close(linger=max(0, min(t.linger_ms, left_ms)))
            with contextlib.suppress(Exception):
                t._ctx.term()
            self._publish()
            t._finished.set()
            with t._cond:
                t._cond.notify_all()

    # --- one iteration -------------------------------------------------------------------------

    def _step(self) -> bool:
        """Move data along; True when the transport should stop."""
        t, spool = self.t, self.spool
        assert spool is not None
        now = time.monotonic()
        closing = t._closing_deadline is not None
        with t._lock:
            items = t._queue.take_all()
            t._wake_armed = not items  # idle: the next submit wakes us; busy: we come back
        self.busy = bool(items)
        for prio, item in items:
            self._admit(prio, item, now)
        if self.online:  # closing too: what the spool holds is delivered while time is left
            self._replay(now)
        if self.in_flight and now >= self.next_resend:
            self._resend(now)
        if (self.online and self.in_flight and now - self.last_ack > t.spool_after
                and now - next(iter(self.in_flight.values())).first_sent > t.spool_after):
            self._go_offline(now)
        if not self.online and now >= self.next_probe:
            self._probe(now)
        if now >= self.next_sync:
            spool.sync()
            self.next_sync = now + SYNC_INTERVAL
        stop = False
        if closing:
            # Stop once everything is acknowledged, or at _give_up_at: until then an offline
            # transport keeps probing (a restarting server may come back) and replays the spool,
            # so neither the last batch nor anything spooled is left behind while time remains.
            delivered = not self.in_flight and not spool.has_pending()
            stop = delivered or now >= t._give_up_at
            if stop:
                with t._lock:  # nothing may slip into the queue after this
                    stop = len(t._queue) == 0
        self._publish()
        return stop

    def _admit(self, prio: int, item: Item, now: float) -> None:
        t, spool = self.t, self.spool
        assert spool is not None
        for seq, frame in self._encode(item):
            out = Out(t.session, seq, prio, frame)
            direct = (self.online and not spool.has_pending()
                      and len(self.in_flight) < t.max_queue)
            if direct and self._transmit(out, now):
                self.c["sent"] += 1
            else:
                self._to_spool(out)

    def _transmit(self, out: Out, now: float) -> bool:
        """Send without blocking; on failure (no peer connected) the transport goes offline."""
        try:
            self.t._sock.send(out.frame, zmq.NOBLOCK)
        except zmq.ZMQError:
            if self.online:
                self._go_offline(now)
            return False
        if not out.attempts:
            out.first_sent = now
        out.attempts += 1
        out.last_sent = now
        self.in_flight[(out.session, out.seq)] = out
        self.next_resend = min(self.next_resend, now + self._backoff(out.attempts))
        return True

    def _backoff(self, attempts: int) -> float:
        return float(min(self.t.resend_after * 2 ** (attempts - 1), MAX_BACKOFF))

    def _to_spool(self, out: Out) -> None:
        spool = self.spool
        assert spool is not None
        if out.entry is not None and spool.requeue(out.entry):
            return
        entry = spool.append(out.session, out.seq, out.prio, out.frame)
        if entry is None:
            self.c["dropped"] += 1
        else:
            out.entry = entry
            self.c["spooled"] += 1

    def _replay(self, now: float) -> None:
        spool = self.spool
        assert spool is not None
        while len(self.in_flight) < self.t.max_queue:
            e = spool.pop_pending()
            if e is None:
                return
            frame = spool.read(e)
            if frame is None:
                continue
            out = Out(e.session, e.seq, e.prio, frame, entry=e)
            if not self._transmit(out, now):
                spool.requeue(e)
                return
            self.c["replayed"] += 1

    def _resend(self, now: float) -> None:
        nxt = now + MAX_BACKOFF
        for out in list(self.in_flight.values()):
            due = out.last_sent + self._backoff(out.attempts)
            if due <= now:
                try:
                    self.t._sock.send(out.frame, zmq.NOBLOCK)
                except zmq.ZMQError:  # no peer connected: spool, probe again soon
                    if self.online:
                        self._go_offline(now)
                        return
                    del self.in_flight[(out.session, out.seq)]
                    self._to_spool(out)
                    continue
                out.attempts += 1
                out.last_sent = now
                self.c["resent"] += 1
                due = now + self._backoff(out.attempts)
            nxt = min(nxt, due)
        self.next_resend = nxt

    def _go_offline(self, now: float) -> None:
        """Server unreachable: everything unacknowledged goes to the spool."""
        self.online = False
        for out in list(self.in_flight.values()):
            self._to_spool(out)
        self.in_flight.clear()
        self.next_probe = now + PROBE_INTERVAL

    def _probe(self, now: float) -> None:
        """Offline: offer the oldest spooled message; its ack brings the transport online."""
        spool = self.spool
        assert spool is not None
        self.next_probe = now + PROBE_INTERVAL
        if self.in_flight:
            return  # a probe is out; the resend schedule repeats it
        if not int(self.t._sock.getsockopt(zmq.EVENTS)) & zmq.POLLOUT:
            return  # no server connected (IMMEDIATE): nothing could be sent
        e = spool.pop_pending()
        if e is None:
            return
        frame = spool.read(e)
        if frame is None:
            return
        out = Out(e.session, e.seq, e.prio, frame, entry=e)
        try:
            self.t._sock.send(frame, zmq.NOBLOCK)
        except zmq.ZMQError:
            spool.requeue(e)
            return
        out.attempts, out.first_sent, out.last_sent = 1, now, now
        self.in_flight[(e.session, e.seq)] = out
        self.next_resend = min(self.next_resend, now + self._backoff(1))
        self.c["replayed"] += 1

    def _read_replies(self) -> None:
        spool = self.spool
        assert spool is not None
        now = time.monotonic()
        while True:
            try:
                parts = self.t._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError:
                return
            try:
                reply = wire.decode_reply(parts[-1])
            except wire.WireError as e:
                log.warning("ignoring malformed reply from server: %s", e.reason)
                continue
            self.online = True
            self.last_ack = now
            if isinstance(reply, wire.Ack):
                for seq in reply.seqs:
                    self.c["acked"] += self._settle(reply.session, seq)
            else:
                n = self._settle(reply.session, reply.seq)
                self.c["rejected"] += n
                if n:
                    log.warning("server rejected message %d: %s", reply.seq, reply.reason[:80])

    def _settle(self, session: str, seq: int) -> int:
        """Forget an acknowledged or rejected message; 1 if it was outstanding."""
        spool = self.spool
        assert spool is not None
        out = self.in_flight.pop((session, seq), None)
        entry = out.entry if out is not None else spool.lookup(session, seq)
        if entry is not None:
            spool.done(entry)
        return int(out is not None or entry is not None)

    def _publish(self) -> None:
        t, spool, c = self.t, self.spool, self.c
        settled = all(o.entry is not None for o in self.in_flight.values())
        with t._lock:
            t._published = TransportCounters(
                sent=c["sent"], acked=c["acked"], resent=c["resent"], spooled=c["spooled"],
                replayed=c["replayed"], rejected=c["rejected"],
                dropped=c["dropped"] + (spool.evicted if spool else 0),
                oversize=c["oversize"], in_flight=len(self.in_flight),
                spool_pending=spool.pending if spool else 0,
                spool_bytes=spool.used if spool else 0,
                spool_corrupt=spool.corrupt if spool else 0, online=self.online,
                sender_cpu_seconds=time.thread_time() - self.cpu0 if self.cpu0 else 0.0)
            if settled and len(t._queue) == 0:
                t._settled = True
                t._cond.notify_all()
