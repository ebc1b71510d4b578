"""What the transport moves: queued items, and the encoded frames awaiting acknowledgement.

The training thread queues `Item`s; the sender's `FrameEncoder` turns each into one or more
frames, each with the next sequence number of the session (`Out`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from spikewatch.agent._spool import Entry
from spikewatch.protocol import wire

log = logging.getLogger("spikewatch.agent.transport")


@dataclass(slots=True)
class HelloItem:
    """A queued hello; encoded (and given its seq) by the sender like a batch."""

    meta: Mapping[str, wire.Scalar]


Item = HelloItem | tuple[wire.Record, ...]  # what the training thread queues


@dataclass(slots=True)
class Out:
    """An encoded message until the server acknowledges it: where it is, and its resends."""

    session: str
    seq: int
    prio: int
    frame: bytes
    entry: Entry | None = None  # its spool entry, once spooled
    attempts: int = 0
    first_sent: float = 0.0
    last_sent: float = 0.0

    @classmethod
    def from_spool(cls, entry: Entry, frame: bytes) -> Out:
        return cls(entry.session, entry.seq, entry.prio, frame, entry)

    def sent(self, now: float) -> None:
        """Record one transmission at `now`."""
        if not self.attempts:
            self.first_sent = now
        self.attempts += 1
        self.last_sent = now


class FrameEncoder:
    """Numbers and encodes queued items; counts what cannot be encoded."""

    def __init__(self, header: Callable[[int], wire.Header]) -> None:
        self.header = header
        self.next_seq = 1
        self.dropped = 0  # items or records that could not be encoded
        self.oversize = 0  # single records too large for one frame (also in `dropped`)

    def encode(self, item: Item, prio: int) -> list[Out]:
        """Frames for one queued item, each with the next seq; drops what cannot be encoded.

        A batch over `wire.MAX_RECORDS` or `wire.MAX_FRAME_BYTES` is split in order; a single
        record too large for a frame is dropped and counted (`oversize`, `dropped`).
        """
        if isinstance(item, HelloItem):
            try:
                return [self._number(wire.Hello(self.header(self.next_seq), item.meta), prio)]
            except Exception:
                log.warning("hello metadata could not be encoded; dropped", exc_info=True)
                self.dropped += 1
                return []
        frames: list[Out] = []
        pending = [item[i:i + wire.MAX_RECORDS] for i in range(0, len(item), wire.MAX_RECORDS)]
        while pending:
            chunk = pending.pop(0)
            try:
                frames.append(self._number(wire.Batch(self.header(self.next_seq), chunk), prio))
            except Exception as e:
                if len(chunk) > 1:  # too large (or one bad record): split in halves, keep order
                    half = len(chunk) // 2
                    pending[:0] = [chunk[:half], chunk[half:]]
                    continue
                self.dropped += 1
                if isinstance(e, ValueError) and "exceeds" in str(e):
                    self.oversize += 1
                else:
                    log.warning("record could not be encoded; dropped: %r", e)
        return frames

    def _number(self, message: wire.Message, prio: int) -> Out:
        """Encode (raises if it cannot be), then take the seq the header was given."""
        frame = wire.encode(message)
        self.next_seq += 1
        return Out(message.header.session, message.header.seq, prio, frame)
