"""The transport's counters: a frozen snapshot the Monitor can read and stream at any time."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TransportCounters:
    """Message counts since the transport started (gauges marked as such).

    A message is one hello or one batch frame (an oversize submit may become several frames).
    Every submitted message ends up `acked`, `rejected` or `dropped`, or is still `queued`,
    `in_flight` or waiting in the spool (`spool_pending`).
    """

    submitted: int = 0  # submit()/hello() calls accepted into the queue
    queued: int = 0  # gauge: waiting in the in-memory queue
    sent: int = 0  # first transmissions of live messages
    acked: int = 0  # acknowledged by the server (durably stored)
    resent: int = 0  # re-transmissions after `resend_after` (with backoff)
    spooled: int = 0  # messages written to the spool
    replayed: int = 0  # spooled messages transmitted from the spool
    dropped: int = 0  # lost on purpose: full queue/spool, oversize, unencodable, forked child
    rejected: int = 0  # nacked by the server: it will never take them
    oversize: int = 0  # single records too large for one frame (also counted in `dropped`)
    in_flight: int = 0  # gauge: transmitted, not yet acknowledged
    spool_pending: int = 0  # gauge: spooled, not yet acknowledged
    spool_bytes: int = 0  # gauge: bytes of spool segments
    spool_corrupt: int = 0  # spool segments or entries that failed their CRC
    online: bool = False  # gauge: the server answered recently
    sender_cpu_seconds: float = 0.0  # CPU time used by the sender thread (its share of overhead)
