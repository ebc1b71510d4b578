"""A bounded spool of encoded frames for while the server is away, on disk or in memory.

Layout on disk (one directory per transport session, so ranks can share one ``spool_dir``)::

    spool_dir/<time_ns:020d>-<session>/lock          flock'ed while a live process owns it
    spool_dir/<time_ns:020d>-<session>/p<P>-<N:08d>.seg

Each priority P has its own lane of append-only segment files, so a full spool can drop the lowest
priority first by deleting whole segments; nothing is ever rewritten. A segment starts with
`SEG_MAGIC` followed by entries ``<length u32><crc32 u32><priority u8><seq u64><frame>``, the CRC
covering priority, seq and frame. The frame is the wire frame exactly as first encoded, so it keeps
its original session and seq and the server's dedup stays exact when it is replayed, even by
another process after a restart: a new spool adopts every directory whose lock it can take.

Durability (fsync policy): every entry is handed to the kernel with one ``write`` as it is
spooled, so it survives a crash or SIGKILL of the training process; segments are fsync'ed when
they are rotated or closed and by `sync()` (the transport calls it about once a second while
dirty), so a power loss can lose roughly the last second. A torn or corrupt entry fails its CRC:
the rest of that segment is skipped and counted in `corrupt`, never sent.

Without a directory the same lanes live in memory (lost with the process, still bounded).
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import itertools
import os
import re
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

SEG_MAGIC: Final = b"SWSPOOL1"
_ENTRY = struct.Struct("<IIBQ")
_CRC_PART = struct.Struct("<BQ")
_DIR_RE: Final = re.compile(r"^(\d{20})-([0-9a-f]{32})$")
_SEG_RE: Final = re.compile(r"^p(\d)-(\d{8})\.seg$")
MAX_PRIORITY: Final = 9
MAX_ENTRY_BYTES: Final = 64 << 20

PENDING, SENT, DONE = 0, 1, 2


class _Segment:
    """One append-only file (or bytearray) of entries of one priority."""

    __slots__ = ("buf", "entries", "fd", "live", "number", "owner", "path", "prio", "removed",
                 "size")

    def __init__(self, owner: _Dir, prio: int, number: int) -> None:
        self.owner, self.prio, self.number = owner, prio, number
        self.path = owner.path / f"p{prio}-{number:08d}.seg" if owner.path else None
        self.buf: bytearray | None = None if self.path else bytearray(SEG_MAGIC)
        self.fd = -1
        self.size = len(SEG_MAGIC)
        self.live = 0
        self.removed = False
        self.entries: list[Entry] = []

    def create(self) -> None:
        if self.path is not None:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND
                              | os.O_CLOEXEC, 0o600)
            _write_all(self.fd, SEG_MAGIC)

    def append(self, blob: bytes) -> int:
        offset = self.size
        if self.buf is not None:
            self.buf += blob
        else:
            _write_all(self.fd, blob)
        self.size += len(blob)
        return offset

    def read(self, offset: int, length: int) -> bytes:
        if self.buf is not None:
            return bytes(self.buf[offset:offset + length])
        assert self.path is not None
        with open(self.path, "rb") as f:
            f.seek(offset)
            return f.read(length)

    def seal(self, fsync: bool) -> None:
        if self.fd >= 0:
            if fsync:
                with contextlib.suppress(OSError):
                    os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1

    def remove(self) -> None:
        self.removed = True
        self.seal(fsync=False)
        self.buf = None
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()


@dataclass(eq=False, slots=True)
class Entry:
    """One spooled frame. `session`/`seq` identify it; `state` is PENDING, SENT or DONE."""

    session: str
    seq: int
    prio: int
    seg: _Segment
    offset: int
    length: int
    state: int = PENDING


@dataclass(eq=False)
class _Dir:
    """One session's directory (or the in-memory equivalent)."""

    path: Path | None
    session: str
    order: int
    own: bool
    lock_fd: int = -1
    lanes: dict[int, list[_Segment]] = field(default_factory=dict)
    current: dict[int, _Segment] = field(default_factory=dict)
    next_number: int = 1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _crc(prio: int, seq: int, frame: bytes) -> int:
    return zlib.crc32(frame, zlib.crc32(_CRC_PART.pack(prio, seq))) & 0xFFFFFFFF


def _try_lock(path: Path) -> int:
    """Open and flock `path` without waiting; the fd, or -1 if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return -1
    return fd


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
        self._dirs: list[_Dir] = []
        self._dirty = False
        self._root = directory
        order = time.time_ns()
        if directory is None:
            self._own = _Dir(None, session, order, own=True)
        else:
            directory.mkdir(parents=True, exist_ok=True)
            self._adopt_all(directory)
            self._own = self._make_own(directory, session, order)
        self._dirs.append(self._own)

    # --- setup ---------------------------------------------------------------------------------

    def _make_own(self, root: Path, session: str, order: int) -> _Dir:
        tmp = root / f"tmp-{session}"
        tmp.mkdir(mode=0o700)
        fd = _try_lock(tmp / "lock")
        final = root / f"{order:020d}-{session}"
        tmp.rename(final)  # only locked directories ever carry a name other processes adopt
        return _Dir(final, session, order, own=True, lock_fd=fd)

    def _adopt_all(self, root: Path) -> None:
        for child in sorted(root.iterdir()):
            m = _DIR_RE.match(child.name)
            if child.name.startswith("tmp-") and child.is_dir():
                fd = _try_lock(child / "lock")
                if fd >= 0:  # a process died between mkdir and rename: nothing was spooled
                    self._remove_dir(child, fd)
                continue
            if not m or not child.is_dir():
                continue
            try:
                fd = _try_lock(child / "lock")
            except OSError:
                self.errors += 1
                continue
            if fd < 0:
                continue  # a live process owns it
            d = _Dir(child, m.group(2), int(m.group(1)), own=False, lock_fd=fd)
            self._scan(d)
            if any(d.lanes.values()):
                self._dirs.append(d)
            else:
                self._remove_dir(child, fd)

    def _scan(self, d: _Dir) -> None:
        assert d.path is not None
        for path in sorted(d.path.iterdir()):
            m = _SEG_RE.match(path.name)
            if not m:
                continue
            seg = _Segment(d, int(m.group(1)), int(m.group(2)))
            try:
                data = path.read_bytes()
            except OSError:
                self.errors += 1
                continue
            pos = len(SEG_MAGIC)
            ok = data[:pos] == SEG_MAGIC
            while ok and pos < len(data):
                if pos + _ENTRY.size > len(data):
                    ok = False
                    break
                length, crc, prio, seq = _ENTRY.unpack_from(data, pos)
                end = pos + _ENTRY.size + length
                frame = data[pos + _ENTRY.size:end]
                if end > len(data) or _crc(prio, seq, frame) != crc or prio != seg.prio:
                    ok = False
                    break
                self._add(Entry(d.session, seq, prio, seg, pos, end - pos))
                pos = end
            if not ok:
                self.corrupt += 1
            seg.size = len(data)
            if seg.live:
                d.lanes.setdefault(seg.prio, []).append(seg)
                self.used += seg.size
                self.adopted += seg.live
            else:
                seg.remove()
            d.next_number = max(d.next_number, seg.number + 1)

    def _remove_dir(self, path: Path, lock_fd: int) -> None:
        for p in path.iterdir():
            with contextlib.suppress(OSError):
                p.unlink()
        with contextlib.suppress(OSError):
            path.rmdir()
        os.close(lock_fd)

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

    def _add(self, e: Entry) -> None:
        e.seg.entries.append(e)
        e.seg.live += 1
        self._index[(e.session, e.seq)] = e
        heapq.heappush(self._heap, (e.seg.owner.order, e.seq, next(self._tie), e))

    def append(self, session: str, seq: int, prio: int, frame: bytes) -> Entry | None:
        """Spool a frame of this transport's session; None if refused (counted)."""
        prio = min(max(prio, 0), MAX_PRIORITY)
        size = _ENTRY.size + len(frame)
        if size > min(self.max_bytes, MAX_ENTRY_BYTES) or not self._make_room(size, prio):
            self.refused += 1
            return None
        d = self._own
        try:
            seg = d.current.get(prio)
            if seg is None or seg.size >= self.segment_bytes:
                if seg is not None:
                    seg.seal(self.fsync)
                    if not seg.live:
                        self._drop_segment(seg)
                seg = _Segment(d, prio, d.next_number)
                d.next_number += 1
                seg.create()
                d.current[prio] = seg
                d.lanes.setdefault(prio, []).append(seg)
                self.used += seg.size
            blob = _ENTRY.pack(len(frame), _crc(prio, seq, frame), prio, seq) + frame
            offset = seg.append(blob)
        except OSError:
            self.errors += 1
            self.refused += 1
            return None
        self.used += len(blob)
        self._dirty = True
        e = Entry(session, seq, prio, seg, offset, len(blob))
        self._add(e)
        return e

    def _make_room(self, size: int, prio: int) -> bool:
        while self.used + size > self.max_bytes:
            victims = [s for d in self._dirs for lane in d.lanes.values() for s in lane
                       if s.prio < prio]
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

    def read(self, e: Entry) -> bytes | None:
        """The frame of an entry, verified; None (entry dropped, counted) if unreadable."""
        try:
            raw = e.seg.read(e.offset, e.length)
            length, crc, prio, seq = _ENTRY.unpack_from(raw, 0)
            frame = raw[_ENTRY.size:]
            if len(frame) == length and seq == e.seq and _crc(prio, seq, frame) == crc:
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
            heapq.heappush(self._heap, (e.seg.owner.order, e.seq, next(self._tie), e))
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

    def _drop_segment(self, seg: _Segment) -> None:
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
            self._remove_dir(d.path, d.lock_fd)

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
                    self._remove_dir(d.path, d.lock_fd)
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
