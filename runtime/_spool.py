"""The durable spool: undelivered telemetry and events in SQLite, in acceptance order.

One connection, owned by the outbox (``_database.Database``: a worker thread, calls that
never interleave, transactions that commit or roll back whole even when cancelled).

Each ``commit()`` is one transaction that appends new rows, deletes delivered ones,
parks rejected ones and enforces the cap, so a busy outbox pays for one fsync per batch
(group commit), not per item. WAL with ``synchronous=NORMAL``: a committed batch
survives the process being killed; a power cut may lose the last batches.

The file is opened with ``locking_mode=EXCLUSIVE``, so a second runtime pointed at the
same spool fails at start instead of interleaving deliveries with the first.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import attrs

from ._database import Database

__all__ = ["CommitOutcome", "Spool", "SpoolRow"]


#: How many rejected payloads are kept for inspection; beyond it the oldest are dropped.
REJECTED_KEEP = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    seq INTEGER PRIMARY KEY,
    kind INTEGER NOT NULL,
    lane_key TEXT NOT NULL,
    created REAL NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS rejected (
    seq INTEGER PRIMARY KEY,
    kind INTEGER NOT NULL,
    created REAL NOT NULL,
    rejected_at REAL NOT NULL,
    status INTEGER,
    error TEXT NOT NULL,
    payload BLOB NOT NULL
);
"""


@attrs.frozen(slots=True)
class SpoolRow:
    """One spooled item: ``seq`` is its acceptance order across the runtime's lifetime."""

    seq: int
    kind: int
    lane_key: str
    created: float
    payload: bytes


@attrs.frozen(slots=True)
class Rejection:
    """A row Core refused; ``spooled`` when it is also in the items table, to be moved."""

    row: SpoolRow
    spooled: bool
    rejected_at: float
    status: int | None
    error: str


@attrs.frozen(slots=True)
class CommitOutcome:
    dropped: int
    """Rows deleted by the cap (bytes or age) in this commit."""


@attrs.frozen(slots=True)
class _Totals:
    depth: int
    bytes: int
    oldest: float | None
    max_seq: int
    rejected: int


class Spool:
    """Open with ``await Spool.open(path)``; close with ``await spool.close()``.

    ``depth``, ``bytes``, ``oldest_created``, ``max_seq`` and ``rejected`` are the table's
    totals as of the last call, so health reads them without touching disk.
    """

    def __init__(self, db: Database, totals: _Totals) -> None:
        self._db = db
        self._totals = totals

    @property
    def depth(self) -> int:
        return self._totals.depth

    @property
    def bytes(self) -> int:
        return self._totals.bytes

    @property
    def oldest_created(self) -> float | None:
        return self._totals.oldest

    @property
    def max_seq(self) -> int:
        return self._totals.max_seq

    @property
    def rejected(self) -> int:
        return self._totals.rejected

    @classmethod
    async def open(cls, path: str | os.PathLike[str]) -> Spool:
        db = await Database.open(Path(path), "spool", _SCHEMA, exclusive=True)
        return cls(db, await db.run(_totals))

    async def commit(
        self,
        append: Sequence[SpoolRow] = (),
        delete: Sequence[tuple[int, int]] = (),
        reject: Sequence[Rejection] = (),
        *,
        max_bytes: int | None = None,
        older_than: float | None = None,
        protect_upto: int = 0,
    ) -> CommitOutcome:
        """One transaction: append rows, delete ``(seq, size)`` pairs that were delivered,
        park rejected rows, then drop the oldest rows past ``max_bytes`` or created before
        ``older_than``. Rows with ``seq <= protect_upto`` are in memory on their way to
        Core, so the cap never takes them."""
        result = await self._db.run(
            _commit_sync,
            self._totals,
            list(append),
            list(delete),
            list(reject),
            max_bytes,
            older_than,
            protect_upto,
        )
        dropped, self._totals = result
        return CommitOutcome(dropped=dropped)

    async def read_after(self, seq: int, limit: int) -> list[SpoolRow]:
        """Up to ``limit`` rows with ``seq`` greater than the given one, in order."""
        return await self._db.run(_read_sync, seq, limit)

    async def close(self) -> None:
        await self._db.close()


# -- run in the worker thread -----------------------------------------------------------


def _totals(con: sqlite3.Connection) -> _Totals:
    """Count everything; only at open and after an inconsistency, since it scans."""
    depth, size, max_seq = con.execute(
        "SELECT COUNT(*), COALESCE(SUM(length(payload)), 0), COALESCE(MAX(seq), 0) FROM items"
    ).fetchone()
    rejected, rejected_max = con.execute(
        "SELECT COUNT(*), COALESCE(MAX(seq), 0) FROM rejected"
    ).fetchone()
    return _Totals(
        depth=depth,
        bytes=size,
        oldest=_oldest(con),
        max_seq=max(max_seq, rejected_max),
        rejected=rejected,
    )


def _oldest(con: sqlite3.Connection) -> float | None:
    row = con.execute("SELECT created FROM items ORDER BY seq LIMIT 1").fetchone()
    return None if row is None else float(row[0])


def _commit_sync(
    con: sqlite3.Connection,
    totals: _Totals,
    append: list[SpoolRow],
    delete: list[tuple[int, int]],
    reject: list[Rejection],
    max_bytes: int | None,
    older_than: float | None,
    protect_upto: int,
) -> tuple[int, _Totals]:
    depth, size, rejected = totals.depth, totals.bytes, totals.rejected
    max_seq = totals.max_seq
    con.execute("BEGIN IMMEDIATE")
    try:
        consistent = True
        if append:
            cur = con.executemany(
                "INSERT OR IGNORE INTO items (seq, kind, lane_key, created, payload) "
                "VALUES (?, ?, ?, ?, ?)",
                [(r.seq, r.kind, r.lane_key, r.created, r.payload) for r in append],
            )
            consistent &= cur.rowcount == len(append)
            depth += len(append)
            size += sum(len(r.payload) for r in append)
            max_seq = max(max_seq, max(r.seq for r in append))
        gone = list(delete) + [(j.row.seq, len(j.row.payload)) for j in reject if j.spooled]
        if gone:
            cur = con.executemany("DELETE FROM items WHERE seq = ?", [(seq,) for seq, _ in gone])
            consistent &= cur.rowcount == len(gone)
            depth -= len(gone)
            size -= sum(n for _, n in gone)
        if reject:
            con.executemany(
                "INSERT OR REPLACE INTO rejected "
                "(seq, kind, created, rejected_at, status, error, payload) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        j.row.seq,
                        j.row.kind,
                        j.row.created,
                        j.rejected_at,
                        j.status,
                        j.error,
                        j.row.payload,
                    )
                    for j in reject
                ],
            )
            rejected += len(reject)
            max_seq = max(max_seq, max(j.row.seq for j in reject))
        dropped = 0
        if rejected > REJECTED_KEEP:
            excess = rejected - REJECTED_KEEP
            con.execute(
                "DELETE FROM rejected WHERE seq IN (SELECT seq FROM rejected ORDER BY seq LIMIT ?)",
                (excess,),
            )
            rejected -= excess  # already counted as rejected, so not as dropped
        excess_bytes = 0 if max_bytes is None else size - max_bytes
        oldest = _oldest(con)
        if excess_bytes > 0 or (
            older_than is not None and oldest is not None and oldest < older_than
        ):
            rows, freed = _drop_oldest(con, protect_upto, excess_bytes, older_than)
            dropped += rows
            depth -= rows
            size -= freed
            oldest = _oldest(con)
        # If a row we counted on was not there, recount rather than drift.
        after = _Totals(depth, size, oldest, max_seq, rejected) if consistent else _totals(con)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return dropped, after


def _drop_oldest(
    con: sqlite3.Connection, protect_upto: int, excess_bytes: int, older_than: float | None
) -> tuple[int, int]:
    """Delete the oldest unprotected rows while over the byte cap or older than the cutoff."""
    rows_dropped = freed = 0
    cursor = protect_upto
    while True:
        batch = con.execute(
            "SELECT seq, created, length(payload) FROM items WHERE seq > ? ORDER BY seq LIMIT 512",
            (cursor,),
        ).fetchall()
        last = None
        for seq, created, length in batch:
            too_old = older_than is not None and created < older_than
            if excess_bytes - freed <= 0 and not too_old:
                break
            last = seq
            freed += length
            rows_dropped += 1
        if last is None:
            break
        con.execute("DELETE FROM items WHERE seq > ? AND seq <= ?", (cursor, last))
        cursor = last
        if last != batch[-1][0]:
            break
    return rows_dropped, freed


def _read_sync(con: sqlite3.Connection, seq: int, limit: int) -> list[SpoolRow]:
    rows = con.execute(
        "SELECT seq, kind, lane_key, created, payload FROM items WHERE seq > ? "
        "ORDER BY seq LIMIT ?",
        (seq, limit),
    ).fetchall()
    return [SpoolRow(s, k, key, c, bytes(p)) for s, k, key, c, p in rows]
