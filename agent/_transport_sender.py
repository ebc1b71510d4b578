"""The transport's sender thread: the only code that touches the link and the spool.

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
from typing import Final

import zmq

from spikewatch.agent._counters import TransportCounters
from spikewatch.agent._spool import Spool
from spikewatch.agent._transport_frames import FrameEncoder, Item, Out
from spikewatch.agent._transport_link import Link
from spikewatch.agent._transport_state import SharedState, TransportOptions
from spikewatch.protocol import wire

log = logging.getLogger("spikewatch.agent.transport")

MAX_BACKOFF: Final = 10.0  # seconds between re-sends of one message, at most
PROBE_INTERVAL: Final = 0.5  # seconds between probes; a (re)connection triggers one at once
SYNC_INTERVAL: Final = 1.0  # seconds between fsyncs of a dirty spool
DRAIN_INTERVAL: Final = 0.02  # seconds between queue drains while submits keep coming
MEMORY_SPOOL_MAX: Final = 32 << 20  # bytes held in memory when there is no spool_dir
_MAX_POLL: Final = 0.5


class Sender:
    """The sender thread's state and loop; only this thread touches the link and the spool."""

    def __init__(self, options: TransportOptions, shared: SharedState, link: Link) -> None:
        self.options, self.shared, self.link = options, shared, link
        self.encoder = FrameEncoder(options.header)
        self.spool: Spool | None = None
        self.spool_on_disk = False
        self.in_flight: dict[tuple[str, int], Out] = {}
        self.online = True
        self.last_ack = time.monotonic()
        self.next_probe = 0.0
        self.next_resend = 0.0
        self.next_sync = 0.0
        self.cpu0 = 0.0
        self.busy = False
        self.tally = dict.fromkeys(("sent", "acked", "resent", "spooled", "replayed", "dropped",
                                    "rejected"), 0)

    # --- lifecycle -----------------------------------------------------------------------------

    def run(self) -> None:
        """The thread's body: loop until close() is done with it, then shut down."""
        shared, sock = self.shared, self.link.socket
        with contextlib.suppress(OSError, AttributeError):
            # run in the training step's gaps: a lower priority thread steals no core from it
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + 10))
        try:
            self.spool = self._open_spool()
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            poller.register(shared.wake_r, zmq.POLLIN)
            self.link.wait_for_connect(0.2)
            watching_out = False
            self.cpu0 = time.thread_time()
            while True:
                # Offline with nothing out: with IMMEDIATE the socket turns writable exactly when
                # a server connects, which is the moment to probe; no busy polling meanwhile.
                want_out = self._wants_connection()
                if want_out != watching_out:
                    poller.modify(sock, zmq.POLLIN | (zmq.POLLOUT if want_out else 0))
                    watching_out = want_out
                timeout = self._poll_timeout(time.monotonic())
                events = dict(poller.poll(int(timeout * 1000)))
                if shared.wake_r in events:
                    shared.clear_wakes()
                flags = events.get(sock, 0)
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

    def forget_after_fork(self) -> None:
        """In a forked child (no sender thread there): leave the link and the spool alone."""
        self.link.abandon()
        if self.spool is not None:
            self.spool.forget_after_fork()

    def _open_spool(self) -> Spool:
        opts = self.options
        if opts.spool_dir is not None:
            try:
                spool = Spool(opts.spool_dir, opts.session, max_bytes=opts.max_spool_bytes)
                self.spool_on_disk = True
                return spool
            except OSError:
                log.warning("spool directory %s unusable; spooling in memory", opts.spool_dir,
                            exc_info=True)
        return Spool(None, opts.session, max_bytes=min(opts.max_spool_bytes, MEMORY_SPOOL_MAX))

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
        if self.shared.closing_deadline is not None:
            due = min(due, self.shared.give_up_at)
        return max(0.0, due - now)

    def _shutdown(self) -> None:
        shared, spool = self.shared, self.spool
        try:
            for out in list(self.in_flight.values()):
                self._to_spool(out)
            self.in_flight.clear()
            for prio, item in shared.take_queued():  # close() raced a submit, or the loop failed
                for out in self.encoder.encode(item, prio):
                    self._to_spool(out)
            if spool is not None:
                self._close_spool(spool)
        except Exception:
            log.exception("spikewatch transport shutdown failed")
        finally:
            deadline = shared.closing_deadline
            left_ms = int(1000 * (deadline - time.monotonic())) if deadline else self.link.linger_ms
            self.link.close(left_ms)
            self._publish()
            shared.finish()

    def _close_spool(self, spool: Spool) -> None:
        """Close the spool and say what it still holds, and whether a later transport gets it."""
        left = spool.pending
        if not self.spool_on_disk:  # memory: lost with the process
            self.tally["dropped"] += left
        spool.close()
        if left and self.spool_on_disk:
            log.warning("spikewatch transport: %d message(s) not acknowledged by the server at "
                        "close are kept in the spool %s; the next transport on this spool_dir "
                        "delivers them", left, self.options.spool_dir)
        elif left:
            log.warning("spikewatch transport: %d message(s) not acknowledged by the server at "
                        "close are lost (no spool_dir; counted as dropped)", left)

    # --- one iteration -------------------------------------------------------------------------

    def _step(self) -> bool:
        """Move data along; True when the transport should stop."""
        shared, spool = self.shared, self.spool
        assert spool is not None
        now = time.monotonic()
        closing = shared.closing_deadline is not None
        items = shared.take_queued()
        self.busy = bool(items)
        for prio, item in items:
            self._admit(prio, item, now)
        if self.online:  # closing too: what the spool holds is delivered while time is left
            self._replay(now, self.options.max_queue - len(self.in_flight))
        if self.in_flight and now >= self.next_resend:
            self._resend(now)
        spool_after = self.options.spool_after
        if (self.online and self.in_flight and now - self.last_ack > spool_after
                and now - next(iter(self.in_flight.values())).first_sent > spool_after):
            self._go_offline(now)
        if not self.online and now >= self.next_probe:
            self._probe(now)
        if now >= self.next_sync:
            spool.sync()
            self.next_sync = now + SYNC_INTERVAL
        stop = False
        if closing:
            # Stop once everything is acknowledged, or at give_up_at: until then an offline
            # transport keeps probing (a restarting server may come back) and replays the spool,
            # so neither the last batch nor anything spooled is left behind while time remains.
            delivered = not self.in_flight and not spool.has_pending()
            stop = (delivered or now >= shared.give_up_at) and shared.queue_is_empty()
        self._publish()
        return stop

    def _admit(self, prio: int, item: Item, now: float) -> None:
        spool = self.spool
        assert spool is not None
        for out in self.encoder.encode(item, prio):
            direct = (self.online and not spool.has_pending()
                      and len(self.in_flight) < self.options.max_queue)
            if direct and self._transmit(out, now):
                self.tally["sent"] += 1
            else:
                self._to_spool(out)

    def _transmit(self, out: Out, now: float) -> bool:
        """Send without blocking; on failure (no peer connected) the transport goes offline."""
        if not self.link.send(out.frame):
            if self.online:
                self._go_offline(now)
            return False
        out.sent(now)
        self.in_flight[(out.session, out.seq)] = out
        self.next_resend = min(self.next_resend, now + self._backoff(out.attempts))
        return True

    def _backoff(self, attempts: int) -> float:
        return float(min(self.options.resend_after * 2 ** (attempts - 1), MAX_BACKOFF))

    def _to_spool(self, out: Out) -> None:
        spool = self.spool
        assert spool is not None
        if out.entry is not None and spool.requeue(out.entry):
            return
        entry = spool.append(out.session, out.seq, out.prio, out.frame)
        if entry is None:
            self.tally["dropped"] += 1
        else:
            out.entry = entry
            self.tally["spooled"] += 1

    def _replay(self, now: float, room: int) -> None:
        """Send up to `room` spooled messages, oldest first; stop at one that cannot go."""
        spool = self.spool
        assert spool is not None
        for _ in range(room):
            popped = spool.pop_frame()
            if popped is None:
                return
            entry, frame = popped
            if not self._transmit(Out.from_spool(entry, frame), now):
                spool.requeue(entry)
                return
            self.tally["replayed"] += 1

    def _resend(self, now: float) -> None:
        nxt = now + MAX_BACKOFF
        for out in list(self.in_flight.values()):
            due = out.last_sent + self._backoff(out.attempts)
            if due <= now:
                if not self.link.send(out.frame):  # no peer connected: spool, probe again soon
                    if self.online:
                        self._go_offline(now)
                        return
                    del self.in_flight[(out.session, out.seq)]
                    self._to_spool(out)
                    continue
                out.sent(now)
                self.tally["resent"] += 1
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
        self.next_probe = now + PROBE_INTERVAL
        if self.in_flight:
            return  # a probe is out; the resend schedule repeats it
        if self.link.connected():  # with IMMEDIATE, nothing could be sent to no server
            self._replay(now, 1)

    def _read_replies(self) -> None:
        now = time.monotonic()
        for raw in self.link.replies():
            try:
                reply = wire.decode_reply(raw)
            except wire.WireError as e:
                if e.reason == "unknown_type":  # a newer server's: nothing to do with it
                    log.debug("ignoring a reply this agent does not know: %s", e.detail)
                else:
                    log.warning("ignoring malformed reply from server: %s", e.reason)
                continue
            self.online = True
            self.last_ack = now
            if isinstance(reply, wire.Alert):
                self.shared.alerts.append(reply)
            elif isinstance(reply, wire.Ack):
                for seq in reply.seqs:
                    self.tally["acked"] += self._settle(reply.session, seq)
            else:
                n = self._settle(reply.session, reply.seq)
                self.tally["rejected"] += n
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
        spool, c, enc = self.spool, self.tally, self.encoder
        self.shared.publish(TransportCounters(
            sent=c["sent"], acked=c["acked"], resent=c["resent"], spooled=c["spooled"],
            replayed=c["replayed"], rejected=c["rejected"],
            dropped=c["dropped"] + enc.dropped + (spool.evicted if spool else 0),
            oversize=enc.oversize, in_flight=len(self.in_flight),
            spool_pending=spool.pending if spool else 0, spool_bytes=spool.used if spool else 0,
            spool_corrupt=spool.corrupt if spool else 0, online=self.online,
            sender_cpu_seconds=time.thread_time() - self.cpu0 if self.cpu0 else 0.0),
            in_flight_settled=all(o.entry is not None for o in self.in_flight.values()))
