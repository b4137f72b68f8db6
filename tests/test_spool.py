from __future__ import annotations

import hashlib
import json
import sqlite3
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from runtime._spool import REJECTED_BODY_MAX, RejectedCaps, Rejection, Spool, SpoolRow
from runtime.delivery import SpoolBusy, SpoolError


def rows(first: int, last: int, *, size: int = 10, created: float = 1000.0) -> list[SpoolRow]:
    return [
        SpoolRow(seq, 0, f"k{seq % 3}", created + seq, b"x" * size)
        for seq in range(first, last + 1)
    ]


async def test_rows_come_back_in_order_and_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state" / "spool.db"
    spool = await Spool.open(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    await spool.commit(rows(1, 5))
    await spool.commit(rows(6, 8), delete=[(2, 10), (3, 10)])
    assert (spool.depth, spool.bytes, spool.max_seq, spool.oldest_created) == (6, 60, 8, 1001.0)
    assert [r.seq for r in await spool.read_after(0, 100)] == [1, 4, 5, 6, 7, 8]
    assert [r.seq for r in await spool.read_after(4, 2)] == [5, 6]
    await spool.close()

    again = await Spool.open(path)
    assert (again.depth, again.bytes, again.max_seq) == (6, 60, 8)
    (first,) = await again.read_after(0, 1)
    assert first == SpoolRow(1, 0, "k1", 1001.0, b"x" * 10)
    await again.close()


async def test_a_second_runtime_cannot_share_a_spool(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path / "spool.db")
    with pytest.raises(SpoolError, match="another runtime"):
        await Spool.open(tmp_path / "spool.db")
    await spool.close()


async def test_an_unwritable_place_is_a_spool_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(SpoolError) as info:
        await Spool.open(tmp_path / "file" / "spool.db")
    assert "writable" in info.value.hint


async def test_the_byte_cap_drops_the_oldest_unprotected_rows(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path / "spool.db")
    await spool.commit(rows(1, 10))
    outcome = await spool.commit(rows(11, 12), max_bytes=75, protect_upto=2)
    # 120 bytes, cap 75: rows 1-2 are on their way to Core, so 3..7 go.
    assert outcome.dropped == 5
    assert [r.seq for r in await spool.read_after(0, 100)] == [1, 2, 8, 9, 10, 11, 12]
    assert (spool.depth, spool.bytes) == (7, 70)
    await spool.close()


async def test_the_age_cap_drops_rows_created_before_the_cutoff(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path / "spool.db")
    await spool.commit(rows(1, 6))
    outcome = await spool.commit(older_than=1004.0)
    assert outcome.dropped == 3
    assert [r.seq for r in await spool.read_after(0, 100)] == [4, 5, 6]
    assert spool.oldest_created == 1004.0
    await spool.close()


async def test_rejected_rows_move_to_their_own_table(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path / "spool.db")
    batch = rows(1, 3)
    await spool.commit(batch)
    never_spooled = SpoolRow(9, 0, "k", 1.0, b"{}")
    now = time.time()
    await spool.commit(
        reject=[
            Rejection(batch[1], True, now, 422, "bad metric"),
            Rejection(never_spooled, False, now, 400, "bad"),
        ]
    )
    assert [r.seq for r in await spool.read_after(0, 10)] == [1, 3]
    assert (spool.depth, spool.rejected, spool.max_seq) == (2, 2, 9)
    await spool.close()
    reopened = await Spool.open(tmp_path / "spool.db")
    assert (reopened.depth, reopened.rejected, reopened.max_seq) == (2, 2, 9)
    await reopened.close()


def rejection(seq: int, size: int, at: float) -> Rejection:
    body = json.dumps({"telemetry_id": f"t{seq}", "metrics": {"blob": "x" * size}}).encode()
    return Rejection(SpoolRow(seq, 0, "k", at, body), False, at, 422, "refused")


async def test_the_rejected_table_is_capped_in_bytes_and_age(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path / "spool.db")
    spool.rejected_caps = RejectedCaps(max_bytes=50_000, max_age=3600.0, body_max=20_000)
    now = time.time()
    await spool.commit(reject=[rejection(1, 1000, now - 7200)])  # older than max_age
    assert spool.rejected == 0
    for seq in range(2, 40):
        await spool.commit(reject=[rejection(seq, 5000, now)])
    # 38 bodies of about 5 kB against 50 kB: only the newest are kept.
    assert spool.rejected_bytes <= 50_000
    assert 8 <= spool.rejected <= 10
    con = spool._db.con
    kept = [s for (s,) in con.execute("SELECT seq FROM rejected ORDER BY seq")]
    assert kept == list(range(40 - len(kept), 40))
    await spool.close()
    again = await Spool.open(tmp_path / "spool.db")
    assert (again.rejected, again.rejected_bytes) == (len(kept), spool.rejected_bytes)
    await again.close()


async def test_a_large_rejected_body_is_kept_as_a_summary(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path / "spool.db")
    big = rejection(7, REJECTED_BODY_MAX * 4, time.time())
    await spool.commit(reject=[big])
    con = spool._db.con
    ((error, payload),) = con.execute("SELECT error, payload FROM rejected").fetchall()
    summary = json.loads(payload)
    assert len(payload) < 2048
    assert summary["bytes"] == len(big.row.payload)
    assert summary["sha256"] == hashlib.sha256(big.row.payload).hexdigest()
    assert (summary["telemetry_id"], summary["metrics"]) == ("t7", ["blob"])
    assert "summary" in error
    assert spool.rejected_bytes == len(payload)
    await spool.close()


async def test_a_spool_error_says_what_failed(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path / "spool.db")
    with pytest.raises(SpoolBusy, match="another runtime"):
        await Spool.open(tmp_path / "spool.db")
    await spool.close()


async def test_rows_keep_every_byte_and_digit(tmp_path: Path) -> None:
    # Batches travel as JSON and concatenated blobs (one statement each way): keys with a
    # NUL and non-ASCII, payloads with any bytes, and times to the last bit come back whole.
    odd = [
        SpoolRow(2**62, 3, "cfg-é\x00dév,1", 1796653649.7503743, b"\x00,\xff{}\n"),
        SpoolRow(2**62 + 1, 1, "c\x00d", 0.1 + 0.2, b""),
        SpoolRow(2**62 + 7, 0, "k", 1e-300, bytes(range(256))),
    ]
    spool = await Spool.open(tmp_path / "spool.db")
    await spool.commit(odd)
    assert (spool.depth, spool.bytes) == (3, 6 + 0 + 256)
    assert await spool.read_after(0, 10) == odd
    assert await spool.read_after(2**62, 1) == odd[1:2]
    await spool.close()
    again = await Spool.open(tmp_path / "spool.db")
    assert await again.read_after(0, 10) == odd
    assert again.newest_by_key == {"cfg-é\x00dév,1": 2**62, "c\x00d": 2**62 + 1, "k": 2**62 + 7}
    await again.close()


class _Counted:
    """A connection that counts statements run and result rows fetched: each is a step
    in which the sqlite3 module lets go of the GIL and has to win it back."""

    def __init__(self, con: sqlite3.Connection) -> None:
        self.con = con
        self.steps = 0

    def execute(self, sql: str, params: Any = ()) -> _CountedCursor:
        self.steps += 1
        return _CountedCursor(self, self.con.execute(sql, params))

    def executemany(self, sql: str, params: Any) -> sqlite3.Cursor:
        params = list(params)
        self.steps += len(params)
        return self.con.executemany(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.con, name)


class _CountedCursor:
    def __init__(self, counted: _Counted, cursor: sqlite3.Cursor) -> None:
        self.counted, self.cursor, self.rowcount = counted, cursor, cursor.rowcount

    def fetchone(self) -> Any:
        self.counted.steps += 1
        return self.cursor.fetchone()

    def fetchall(self) -> list[Any]:
        found = self.cursor.fetchall()
        self.counted.steps += len(found)
        return found


async def test_a_batch_costs_the_same_few_steps_however_many_rows(tmp_path: Path) -> None:
    # The writer's thread wins the GIL back from a busy trio thread only now and then, so
    # a step per row (executemany, fetchall) made the spool slowest exactly past capacity.
    spool = await Spool.open(tmp_path / "spool.db")
    counted = _Counted(spool._db.con)
    spool._db.con = counted  # type: ignore[assignment]

    async def steps(commit: Any) -> int:
        counted.steps = 0
        await commit
        return counted.steps

    few = await steps(spool.commit(rows(1, 3)))
    # One INSERT per 4,096 rows appended.
    assert await steps(spool.commit(rows(4, 5_003))) == few + 1
    assert spool.depth == 5_003
    read_few = await steps(spool.read_after(0, 3))
    assert await steps(spool.read_after(0, 2_000)) == read_few
    delete_few = await steps(spool.commit(delete=[(n, 10) for n in range(1, 4)]))
    assert await steps(spool.commit(delete=[(n, 10) for n in range(4, 5_004)])) == delete_few
    assert spool.depth == 0
    spool._db.con = counted.con
    await spool.close()
