"""A bounded spool of encoded frames for while the server is away, on disk or in memory.

Frames are kept exactly as first encoded (`agent._spool_format`), so each keeps its original
session and seq and the server's dedup stays exact when it is replayed, even by another process
after a restart: a new spool adopts every session directory whose owner is gone
(`agent._spool_files`). Replay order is oldest session first, then by seq. Each priority has its
own lane of append-only segments, so a full spool drops the lowest priority first by deleting
whole segments; nothing is ever rewritten.

Durability (fsync policy): every entry is handed to the kernel with one ``write`` as it is
spooled, so it survives a crash or SIGKILL of the training process; segments are fsync'ed when
they are rotated or closed and by `sync()` (the transport calls it about once a second while
dirty), so a power loss can lose roughly the last second. A torn or corrupt entry fails its CRC:
the rest of that segment is skipped and counted in `corrupt`, never sent.

Without a directory the same lanes live in memory (lost with the process, still bounded).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import struct
import time
from pathlib import Path
from typing import Final

from spikewatch.agent._spool_files import (
    DONE,
    PENDING,
    SENT,
    Entry,
    Segment,
    SessionDir,
    adopt_dirs,
    create_own_dir,
    remove_dir,
)
from spikewatch.agent._spool_format import ENTRY_HEADER, MAX_ENTRY_BYTES, pack_entry, verified_frame

__all__ = ["MAX_PRIORITY", "Entry", "Spool"]

MAX_PRIORITY: Final = 9


class Spool:
    """Bounded, ordered store of unacknowledged frames; replays oldest session first, by seq.

    Not thread-safe: the transport's sender thread owns it. Filesystem errors never escape
    `append` (the frame is refused and counted in `errors`).
    """

    def __init__(self, directory: Path | None, session: str, *, max_bytes: int,
                 segment_bytes: int | None = None, fsync: bool = True) -> None:
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or min(4 << 20, max(4096, max_bytes // 16))
        self.fsync = fsync
        self.used = 0  # bytes of all live segment files
        self.evicted = 0  # pending entries deleted to make room for higher priority
        self.refused = 0  # entries refused: no room, or larger than the whole spool
        self.corrupt = 0  # segments whose tail failed the CRC
        self.errors = 0  # filesystem errors
        self.adopted = 0  # entries found from earlier processes
        self._index: dict[tuple[str, int], Entry] = {}
        self._heap: list[tuple[int, int, int, Entry]] = []
        self._tie = itertools.count()
        self._dirs: list[SessionDir] = []
        self._dirty = False
        order = time.time_ns()
        if directory is None:
            self._own = SessionDir(None, session, order, own=True)
        else:
            directory.mkdir(parents=True, exist_ok=True)
            self._adopt(directory)
            self._own = create_own_dir(directory, session, order)
        self._dirs.append(self._own)

    def _adopt(self, root: Path) -> None:
        found = adopt_dirs(root)
        self.corrupt += found.corrupt
        self.errors += found.errors
        for d in found.dirs:
            for seg in d.segments():
                self.used += seg.size
                self.adopted += seg.live
                for e in seg.entries:
                    self._index_entry(e)
        self._dirs.extend(found.dirs)

    # --- queries -------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Entries not yet acknowledged (waiting for replay or in flight from the spool)."""
        return len(self._index)

    def has_pending(self) -> bool:
        """Whether any entry waits to be (re)sent."""
        while self._heap and self._heap[0][3].state != PENDING:
            heapq.heappop(self._heap)
        return bool(self._heap)

    def lookup(self, session: str, seq: int) -> Entry | None:
        """The live entry for a message, if spooled."""
        return self._index.get((session, seq))

    # --- mutation ------------------------------------------------------------------------------

    def _index_entry(self, e: Entry) -> None:
        self._index[(e.session, e.seq)] = e
        self._queue(e)

    def _queue(self, e: Entry) -> None:
        heapq.heappush(self._heap, (e.seg.owner.order, e.seq, next(self._tie), e))

    def append(self, session: str, seq: int, prio: int, frame: bytes) -> Entry | None:
        """Spool a frame of this transport's session; None if refused (counted)."""
        prio = min(max(prio, 0), MAX_PRIORITY)
        size = ENTRY_HEADER.size + len(frame)
        if size > min(self.max_bytes, MAX_ENTRY_BYTES) or not self._make_room(size, prio):
            self.refused += 1
            return None
        try:
            seg = self._open_segment(prio)
            blob = pack_entry(prio, seq, frame)
            offset = seg.append(blob)
        except OSError:
            self.errors += 1
            self.refused += 1
            return None
        self.used += len(blob)
        self._dirty = True
        e = Entry(session, seq, prio, seg, offset, len(blob))
        seg.add(e)
        self._index_entry(e)
        return e

    def _open_segment(self, prio: int) -> Segment:
        """The own session's segment of `prio` with room left, rotated if full."""
        d = self._own
        seg = d.current.get(prio)
        if seg is not None and seg.size < self.segment_bytes:
            return seg
        if seg is not None:
            seg.seal(self.fsync)
            if not seg.live:
                self._drop_segment(seg)
        seg = Segment(d, prio, d.next_number)
        d.next_number += 1
        seg.create()
        d.current[prio] = seg
        d.lanes.setdefault(prio, []).append(seg)
        self.used += seg.size
        return seg

    def _make_room(self, size: int, prio: int) -> bool:
        while self.used + size > self.max_bytes:
            victims = [s for d in self._dirs for s in d.segments() if s.prio < prio]
            if not victims:
                return False
            victim = min(victims, key=lambda s: (s.prio, s.owner.order, s.number))
            for e in victim.entries:
                if e.state == PENDING:
                    self.evicted += 1
                    e.state = DONE
                    self._index.pop((e.session, e.seq), None)
            self._drop_segment(victim)
        return True

    def pop_pending(self) -> Entry | None:
        """The next entry to replay (oldest session, lowest seq), marked SENT."""
        if not self.has_pending():
            return None
        e = heapq.heappop(self._heap)[3]
        e.state = SENT
        return e

    def pop_frame(self) -> tuple[Entry, bytes] | None:
        """The next entry to replay and its verified frame; unreadable ones are dropped."""
        while (e := self.pop_pending()) is not None:
            frame = self.read(e)
            if frame is not None:
                return e, frame
        return None

    def read(self, e: Entry) -> bytes | None:
        """The frame of an entry, verified; None (entry dropped, counted) if unreadable."""
        try:
            frame = verified_frame(e.seg.read(e.offset, e.length), e.seq)
            if frame is not None:
                return frame
            self.corrupt += 1
        except (OSError, struct.error):
            self.errors += 1
        self.done(e)
        return None

    def requeue(self, e: Entry) -> bool:
        """Put a SENT entry back in line; False if its segment is gone (re-append it)."""
        if e.seg.removed or e.state == DONE:
            return False
        if e.state == SENT:
            e.state = PENDING
            self._queue(e)
        return True

    def done(self, e: Entry) -> None:
        """The entry was acknowledged, rejected or dropped: forget it, free its segment."""
        if e.state == DONE:
            return
        e.state = DONE
        self._index.pop((e.session, e.seq), None)
        seg = e.seg
        seg.live -= 1
        if seg.live <= 0:
            self._drop_segment(seg)

    def _drop_segment(self, seg: Segment) -> None:
        if seg.removed:
            return
        d = seg.owner
        lane = d.lanes.get(seg.prio, [])
        if seg in lane:
            lane.remove(seg)
        if d.current.get(seg.prio) is seg:
            del d.current[seg.prio]
        self.used -= seg.size
        seg.remove()
        if not d.own and not any(d.lanes.values()) and d.path is not None:
            self._dirs.remove(d)
            remove_dir(d.path, d.lock_fd)

    # --- durability and lifetime ---------------------------------------------------------------

    def sync(self) -> None:
        """fsync the open segments and the directory if anything was written since the last."""
        if self._dirty and self.fsync:
            for seg in self._own.current.values():
                if seg.fd >= 0:
                    with contextlib.suppress(OSError):
                        os.fsync(seg.fd)
            if self._own.path is not None:  # new segment names survive a power loss too
                with contextlib.suppress(OSError):
                    dfd = os.open(self._own.path, os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        os.fsync(dfd)
                    finally:
                        os.close(dfd)
        self._dirty = False

    def close(self) -> None:
        """Seal everything; remove the own directory if nothing in it is still unacknowledged."""
        for d in list(self._dirs):
            for seg in list(d.current.values()):
                if seg.live:
                    seg.seal(self.fsync)
                else:
                    self._drop_segment(seg)
            d.current.clear()
            if d.path is not None and d.lock_fd >= 0:
                if not any(d.lanes.values()):
                    remove_dir(d.path, d.lock_fd)
                else:
                    os.close(d.lock_fd)
                d.lock_fd = -1
        self._dirs.clear()

    def forget_after_fork(self) -> None:
        """In a forked child: close inherited descriptors, touch no file (the parent owns them)."""
        for d in self._dirs:
            for seg in d.current.values():
                if seg.fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(seg.fd)
                    seg.fd = -1
            if d.lock_fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(d.lock_fd)
                d.lock_fd = -1
        self._dirs.clear()
