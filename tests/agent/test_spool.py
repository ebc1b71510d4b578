"""The spool on its own: order, durability across processes, CRC checks, bounded size, priority."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from spikewatch.agent._spool import Spool
from spikewatch.agent._spool_format import SEG_MAGIC

S1 = "11111111111111111111111111111111"
S2 = "22222222222222222222222222222222"
ROOT = Path(__file__).resolve().parents[2]


def _frame(seq: int, size: int = 100) -> bytes:
    return (f"frame-{seq}-".encode() * size)[:size]


def _drain(spool: Spool) -> list[tuple[str, int, bytes | None]]:
    out = []
    while (e := spool.pop_pending()) is not None:
        out.append((e.session, e.seq, spool.read(e)))
    return out


@pytest.mark.parametrize("on_disk", [True, False])
def test_replays_in_seq_order_across_priorities(tmp_path: Path, on_disk: bool) -> None:
    spool = Spool(tmp_path if on_disk else None, S1, max_bytes=1 << 20)
    for seq, prio in [(3, 0), (1, 2), (2, 1), (5, 1), (4, 2)]:
        assert spool.append(S1, seq, prio, _frame(seq)) is not None
    assert spool.pending == 5
    assert _drain(spool) == [(S1, s, _frame(s)) for s in range(1, 6)]
    assert spool.pending == 5  # popped is not acknowledged
    for s in range(1, 6):
        e = spool.lookup(S1, s)
        assert e is not None
        spool.done(e)
    assert spool.pending == 0
    assert spool.used == 0
    if on_disk:
        assert not list(tmp_path.glob("*/*.seg"))
    spool.close()
    assert list(tmp_path.iterdir()) == []


def test_requeued_entries_come_back_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path, S1, max_bytes=1 << 20)
    for seq in range(1, 6):
        spool.append(S1, seq, 1, _frame(seq))
    first, second = spool.pop_pending(), spool.pop_pending()
    assert first is not None
    assert second is not None
    assert spool.requeue(second)
    assert spool.requeue(first)
    assert [s for _, s, _ in _drain(spool)] == [1, 2, 3, 4, 5]
    spool.close()


def test_a_later_process_adopts_and_replays_the_spool(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from spikewatch.agent._spool import Spool
        s = Spool(Path({str(tmp_path)!r}), {S1!r}, max_bytes=1 << 20, segment_bytes=1000)
        for seq in range(1, 21):
            s.append({S1!r}, seq, seq % 3, (b"x%d-" % seq) * 50)
        os._exit(0)  # a crash: no close(), no fsync of the open segments
    """)
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True, timeout=60)
    spool = Spool(tmp_path, S2, max_bytes=1 << 20)
    assert spool.adopted == 20
    assert spool.corrupt == 0
    spool.append(S2, 1, 1, b"new")
    got = _drain(spool)
    assert [(s, q) for s, q, _ in got] == [(S1, q) for q in range(1, 21)] + [(S2, 1)]
    assert got[4][2] == b"x5-" * 50
    for sess, seq, _ in got:
        e = spool.lookup(sess, seq)
        assert e is not None
        spool.done(e)
    assert not list(tmp_path.glob(f"*-{S1}"))  # drained: the old directory is gone
    spool.close()


def test_a_live_spool_is_never_adopted(tmp_path: Path) -> None:
    owner = Spool(tmp_path, S1, max_bytes=1 << 20)
    owner.append(S1, 1, 1, b"mine")
    other = Spool(tmp_path, S2, max_bytes=1 << 20)
    assert other.adopted == 0
    assert other.pop_pending() is None
    other.close()
    owner.close()
    later = Spool(tmp_path, S2, max_bytes=1 << 20)
    assert later.adopted == 1
    later.close()


def test_torn_and_corrupt_entries_are_never_replayed(tmp_path: Path) -> None:
    spool = Spool(tmp_path, S1, max_bytes=1 << 20)
    for seq in range(1, 11):
        spool.append(S1, seq, 1, _frame(seq))
    spool.close()
    (seg,) = tmp_path.glob("*/p1-*.seg")
    data = bytearray(seg.read_bytes())
    entry = (len(data) - len(SEG_MAGIC)) // 10
    data[len(SEG_MAGIC) + 6 * entry + 40] ^= 0xFF  # inside entry 7's frame
    seg.write_bytes(bytes(data))
    again = Spool(tmp_path, S2, max_bytes=1 << 20)
    assert again.corrupt == 1
    assert again.adopted == 6
    assert [s for _, s, _ in _drain(again)] == [1, 2, 3, 4, 5, 6]
    again.close()
    seg.write_bytes(bytes(data[: len(SEG_MAGIC) + 3 * entry + 7]))  # torn write
    third = Spool(tmp_path, S2, max_bytes=1 << 20)
    assert third.corrupt == 1
    assert [s for _, s, _ in _drain(third)] == [1, 2, 3]
    third.close()


def test_read_detects_corruption_after_adoption(tmp_path: Path) -> None:
    spool = Spool(tmp_path, S1, max_bytes=1 << 20)
    e = spool.append(S1, 1, 1, _frame(1))
    assert e is not None
    assert e.seg.path is not None
    os.sync()
    with open(e.seg.path, "r+b") as f:
        f.seek(e.offset + 30)
        f.write(b"\xff\xff")
    popped = spool.pop_pending()
    assert popped is e
    assert spool.read(e) is None
    assert spool.corrupt == 1
    assert spool.pending == 0
    spool.close()


def test_full_spool_evicts_lower_priority_and_refuses_the_rest(tmp_path: Path) -> None:
    spool = Spool(tmp_path, S1, max_bytes=8000, segment_bytes=1000)
    seq = 0
    for _ in range(30):  # priority 0 fills the spool, then is refused
        seq += 1
        spool.append(S1, seq, 0, _frame(seq, 300))
    assert spool.used <= 8000
    assert spool.refused > 0
    assert spool.evicted == 0
    kept0 = spool.pending
    for _ in range(10):
        seq += 1
        assert spool.append(S1, seq, 2, _frame(seq, 300)) is not None
    assert spool.evicted > 0
    assert spool.used <= 8000
    assert spool.pending == kept0 - spool.evicted + 10
    got = [e.prio for _ in range(spool.pending) if (e := spool.pop_pending())]
    assert got.count(2) == 10
    while spool.append(S1, seq := seq + 1, 2, _frame(seq, 300)) is not None:
        assert seq < 100  # priority 2 evicts every lower segment, then is refused itself
    assert spool.used <= 8000
    refused = spool.refused
    assert spool.append(S1, 999, 0, _frame(999, 300)) is None  # lowest priority, no room
    assert spool.append(S1, 1000, 1, b"x" * 9000) is None  # larger than the whole spool
    assert spool.refused == refused + 2
    spool.close()


def test_eviction_takes_the_oldest_segment_of_the_lowest_priority(tmp_path: Path) -> None:
    spool = Spool(None, S1, max_bytes=3000, segment_bytes=500)
    for seq in range(1, 7):
        spool.append(S1, seq, 1 if seq <= 3 else 0, _frame(seq, 400))
    spool.append(S1, 7, 2, _frame(7, 400))
    spool.append(S1, 8, 2, _frame(8, 400))
    left = [e.seq for _ in range(spool.pending) if (e := spool.pop_pending())]
    assert left == [1, 2, 3, 6, 7, 8]  # priority 0 went oldest first; priority 1 stayed


def test_stale_temporary_directory_is_cleaned(tmp_path: Path) -> None:
    stale = tmp_path / f"tmp-{S1}"
    stale.mkdir()
    (stale / "lock").write_bytes(b"")
    Spool(tmp_path, S2, max_bytes=1 << 20).close()
    assert not stale.exists()
