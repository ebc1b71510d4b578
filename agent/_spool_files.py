"""The spool's files: one directory per transport session, one lane of segments per priority.

Layout on disk (one directory per session, so ranks can share one ``spool_dir``)::

    spool_dir/<time_ns:020d>-<session>/lock          flock'ed while a live process owns it
    spool_dir/<time_ns:020d>-<session>/p<P>-<N:08d>.seg

A directory is created as ``tmp-<session>``, locked, then renamed: only locked directories ever
carry the name other processes adopt. A later process adopts every directory whose lock it can
take (its owner is gone) and reads its segments back. Without a directory the same lanes live in
memory (`SessionDir.path` is None).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from spikewatch.agent._spool_format import SEG_MAGIC, parse_segment, write_all

_DIR_RE: Final = re.compile(r"^(\d{20})-([0-9a-f]{32})$")
_SEG_RE: Final = re.compile(r"^p(\d)-(\d{8})\.seg$")

PENDING, SENT, DONE = 0, 1, 2  # an entry waits to be (re)sent, is out, or is settled


class Segment:
    """One append-only file (or bytearray) of entries of one priority."""

    __slots__ = ("buf", "entries", "fd", "live", "number", "owner", "path", "prio", "removed",
                 "size")

    def __init__(self, owner: SessionDir, prio: int, number: int) -> None:
        self.owner, self.prio, self.number = owner, prio, number
        self.path = owner.path / f"p{prio}-{number:08d}.seg" if owner.path else None
        self.buf: bytearray | None = None if self.path else bytearray(SEG_MAGIC)
        self.fd = -1
        self.size = len(SEG_MAGIC)
        self.live = 0  # entries not yet settled; at 0 the segment is deleted
        self.removed = False
        self.entries: list[Entry] = []

    def create(self) -> None:
        if self.path is not None:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND
                              | os.O_CLOEXEC, 0o600)
            write_all(self.fd, SEG_MAGIC)

    def append(self, blob: bytes) -> int:
        """Write one entry's bytes; returns its offset."""
        offset = self.size
        if self.buf is not None:
            self.buf += blob
        else:
            write_all(self.fd, blob)
        self.size += len(blob)
        return offset

    def add(self, entry: Entry) -> None:
        self.entries.append(entry)
        self.live += 1

    def read(self, offset: int, length: int) -> bytes:
        if self.buf is not None:
            return bytes(self.buf[offset:offset + length])
        assert self.path is not None
        with open(self.path, "rb") as f:
            f.seek(offset)
            return f.read(length)

    def seal(self, fsync: bool) -> None:
        """Close the file (fsync'ed first if asked); appends go to a new segment."""
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
    seg: Segment
    offset: int
    length: int
    state: int = PENDING


@dataclass(eq=False)
class SessionDir:
    """One session's directory (or the in-memory equivalent) and its lanes of segments."""

    path: Path | None
    session: str
    order: int  # creation time: older sessions replay first
    own: bool  # this process's own session (it appends here)
    lock_fd: int = -1
    lanes: dict[int, list[Segment]] = field(default_factory=dict)
    current: dict[int, Segment] = field(default_factory=dict)  # the open segment per priority
    next_number: int = 1

    def segments(self) -> list[Segment]:
        return [s for lane in self.lanes.values() for s in lane]


@dataclass
class Adoption:
    """What `adopt_dirs` found: directories of dead owners, and the trouble it met."""

    dirs: list[SessionDir] = field(default_factory=list)
    corrupt: int = 0  # segments whose tail failed the CRC
    errors: int = 0  # filesystem errors


def try_lock(path: Path) -> int:
    """Open and flock `path` without waiting; the fd, or -1 if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return -1
    return fd


def remove_dir(path: Path, lock_fd: int) -> None:
    """Delete a session directory and everything in it, then release its lock."""
    for p in path.iterdir():
        with contextlib.suppress(OSError):
            p.unlink()
    with contextlib.suppress(OSError):
        path.rmdir()
    os.close(lock_fd)


def create_own_dir(root: Path, session: str, order: int) -> SessionDir:
    """This process's locked session directory under `root`."""
    tmp = root / f"tmp-{session}"
    tmp.mkdir(mode=0o700)
    fd = try_lock(tmp / "lock")
    final = root / f"{order:020d}-{session}"
    tmp.rename(final)  # only locked directories ever carry a name other processes adopt
    return SessionDir(final, session, order, own=True, lock_fd=fd)


def adopt_dirs(root: Path) -> Adoption:
    """Lock and read back every session directory under `root` whose owner is gone.

    Directories with nothing left to send are deleted; so are ``tmp-`` leftovers of a process
    that died before its first entry.
    """
    found = Adoption()
    for child in sorted(root.iterdir()):
        m = _DIR_RE.match(child.name)
        if child.name.startswith("tmp-") and child.is_dir():
            fd = try_lock(child / "lock")
            if fd >= 0:  # a process died between mkdir and rename: nothing was spooled
                remove_dir(child, fd)
            continue
        if not m or not child.is_dir():
            continue
        try:
            fd = try_lock(child / "lock")
        except OSError:
            found.errors += 1
            continue
        if fd < 0:
            continue  # a live process owns it
        d = SessionDir(child, m.group(2), int(m.group(1)), own=False, lock_fd=fd)
        _read_segments(d, found)
        if any(d.lanes.values()):
            found.dirs.append(d)
        else:
            remove_dir(child, fd)
    return found


def _read_segments(d: SessionDir, found: Adoption) -> None:
    """Fill `d`'s lanes with its segments that still hold entries; delete the empty ones."""
    assert d.path is not None
    for path in sorted(d.path.iterdir()):
        m = _SEG_RE.match(path.name)
        if not m:
            continue
        seg = Segment(d, int(m.group(1)), int(m.group(2)))
        try:
            data = path.read_bytes()
        except OSError:
            found.errors += 1
            continue
        entries, intact = parse_segment(data, seg.prio)
        for offset, length, seq in entries:
            seg.add(Entry(d.session, seq, seg.prio, seg, offset, length))
        found.corrupt += not intact
        seg.size = len(data)
        if seg.live:
            d.lanes.setdefault(seg.prio, []).append(seg)
        else:
            seg.remove()
        d.next_number = max(d.next_number, seg.number + 1)
