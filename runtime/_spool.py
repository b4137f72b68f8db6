"""The durable spool: undelivered telemetry and events in SQLite, in acceptance order.

One connection, owned by the outbox (``_database.Database``: a worker thread, calls that
never interleave, transactions that commit or roll back whole even when cancelled).

Each ``commit()`` is one transaction that appends new rows, deletes delivered ones,
parks rejected ones and enforces the caps, so a busy outbox pays for one fsync per batch
(group commit), not per item. WAL with ``synchronous=NORMAL``: a committed batch
survives the process being killed; a power cut may lose the last batches. A commit that
fails (a full disk, an I/O error) raises a classified ``SpoolError`` and leaves the
totals as they were: the outbox keeps the batch and tries again.

The file is opened with ``locking_mode=EXCLUSIVE``, so a second runtime pointed at the
same spool fails at start instead of interleaving deliveries with the first. A damaged
file is moved aside and rebuilt from what can be read (``_recovery``); a small marker
beside the spool (``spool.db.marker.json``: its depth, rewritten at most every few
seconds while it changes, at once when it empties, and at close) lets the next start
notice a spool that vanished or was emptied behind the runtime's back. Either way
``recovery`` says what was lost.

Refused payloads go to the ``rejected`` table for inspection, capped by count, bytes and
age (oldest first); a body over ``REJECTED_BODY_MAX`` is kept as a summary (its size,
its SHA-256, its ids and its first bytes), not whole.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Container, Mapping, Sequence
from operator import attrgetter
from pathlib import Path
from typing import Any, Protocol

import attrs
import trio

from . import _offload
from ._database import Database, rollback
from ._recovery import Recovery, SpoolMarker, Table, noticed_loss

log = logging.getLogger("runtime.spool")

__all__ = [
    "REJECTED_BODY_MAX",
    "REJECTED_KEEP",
    "REJECTED_MAX_AGE",
    "REJECTED_MAX_BYTES",
    "CommitOutcome",
    "Rejection",
    "Spool",
    "SpoolRow",
]


#: How many rejected payloads are kept for inspection; beyond it the oldest are dropped.
REJECTED_KEEP = 10_000
#: Bytes of rejected payloads kept; beyond it the oldest are dropped.
REJECTED_MAX_BYTES = 16 * 1024 * 1024
#: Seconds a rejected payload is kept.
REJECTED_MAX_AGE = 7 * 24 * 3600.0
#: A rejected body larger than this is kept as a summary, not whole.
REJECTED_BODY_MAX = 16 * 1024
#: The marker is rewritten at most this often while the depth changes (at once on empty).
MARKER_EVERY = 5.0
#: What a probe of a failing disk writes (and deletes): about one batch of items.
PROBE_BYTES = 64 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    seq INTEGER PRIMARY KEY,
    kind INTEGER NOT NULL,
    lane_key TEXT NOT NULL,
    created REAL NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS probe (bytes BLOB);
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


# A batch moves in a few steps whatever its size. The sqlite3 module gives up the GIL
# around every step (executemany steps once per row, fetchall once per result row), and a
# worker thread wins it back from a trio thread busy with sockets only now and then:
# measured here, 12,000 rows inserted with executemany took 30 ms beside an idle trio
# thread and 2-19 s beside a busy one. So past capacity the spool fell behind what spilled,
# and a read of the backlog held the spool for seconds.
#
# Appends bind up to the largest of ``_INSERT_SIZES`` rows per statement, padded up to the
# next size with copies of the batch's last row, which the conflict clause skips: three
# cached statements serve every batch. (``ON CONFLICT DO NOTHING`` rather than ``OR
# IGNORE``, which would also skip a row with a NULL instead of failing.)
_INSERT_SIZES = (64, 512, 4096)
_INSERTS = {
    size: "INSERT INTO items (seq, kind, lane_key, created, payload) VALUES "
    + ", ".join(["(?, ?, ?, ?, ?)"] * size)
    + " ON CONFLICT (seq) DO NOTHING"
    for size in _INSERT_SIZES
}
_DELETE = "DELETE FROM items WHERE seq IN (SELECT value FROM json_each(?))"
# One row back: the columns joined, keys and payloads as blobs cut by their lengths, times
# printed with 17 digits (which read back exactly).
_READ = (
    "SELECT group_concat(seq), group_concat(kind), group_concat(printf('%!.17g', created)), "
    "group_concat(length(CAST(lane_key AS BLOB))), "
    "CAST(group_concat(CAST(lane_key AS BLOB), '') AS BLOB), "
    "group_concat(length(CAST(payload AS BLOB))), "
    "CAST(group_concat(CAST(payload AS BLOB), '') AS BLOB) "
    "FROM (SELECT seq, kind, lane_key, created, payload FROM items WHERE seq > ? "
    "ORDER BY seq LIMIT ?)"
)


def _is_item(row: tuple[Any, ...]) -> bool:
    """A salvaged row is a well-formed item: types right and a JSON object as payload."""
    seq, kind, key, created, payload = row
    if not (
        type(seq) is int
        and type(kind) is int
        and type(key) is str
        and isinstance(created, (int, float))
        and isinstance(payload, bytes)
    ):
        return False
    try:
        return isinstance(json.loads(payload), dict)
    except ValueError:
        return False


def _is_rejected(row: tuple[Any, ...]) -> bool:
    seq, kind, created, rejected_at, status, error, payload = row
    return (
        type(seq) is int
        and type(kind) is int
        and isinstance(created, (int, float))
        and isinstance(rejected_at, (int, float))
        and (status is None or type(status) is int)
        and type(error) is str
        and isinstance(payload, bytes)
    )


_TABLES = (
    Table("items", ("seq", "kind", "lane_key", "created", "payload"), _is_item),
    Table(
        "rejected",
        ("seq", "kind", "created", "rejected_at", "status", "error", "payload"),
        _is_rejected,
    ),
)


@attrs.frozen(slots=True)
class SpoolRow:
    """One spooled item: ``seq`` is its acceptance order across the runtime's lifetime."""

    seq: int
    kind: int
    lane_key: str
    created: float
    payload: bytes


class Row(Protocol):
    """What ``Spool.commit`` appends: a ``SpoolRow``, or any object with its fields."""

    @property
    def seq(self) -> int: ...
    @property
    def kind(self) -> int: ...
    @property
    def lane_key(self) -> str: ...
    @property
    def created(self) -> float: ...
    @property
    def payload(self) -> bytes: ...


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
    dropped_by_config: Mapping[str, int] = attrs.field(factory=dict)
    """The same, per config id (the part of ``lane_key`` before its NUL)."""


@attrs.frozen(slots=True)
class _Totals:
    depth: int
    bytes: int
    oldest: float | None
    max_seq: int
    rejected: int
    rejected_bytes: int = 0


@attrs.frozen(slots=True)
class RejectedCaps:
    keep: int = REJECTED_KEEP
    max_bytes: int = REJECTED_MAX_BYTES
    max_age: float = REJECTED_MAX_AGE
    body_max: int = REJECTED_BODY_MAX


class Spool:
    """Open with ``await Spool.open(path)``; close with ``await spool.close()``.

    ``depth``, ``bytes``, ``oldest_created``, ``max_seq`` and ``rejected`` are the table's
    totals as of the last call, so health reads them without touching disk.
    """

    def __init__(self, db: Database, totals: _Totals, recovery: Recovery | None = None) -> None:
        self._db = db
        self._totals = totals
        self.recovery = recovery
        """What was lost since the last run (a damaged, emptied or missing spool), if any."""
        self.rejected_caps = RejectedCaps()
        self.rows_by_config: dict[str, int] = {}
        """Rows per config id when the spool was opened (for the outbox's bookkeeping)."""
        self.newest_by_key: dict[str, int] = {}
        """The newest row's seq per lane key (device) when the spool was opened: those
        devices' new items queue behind their rows, to keep each device's order."""
        self._marked = totals.depth
        self._marked_at = time.monotonic()

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

    @property
    def rejected_bytes(self) -> int:
        return self._totals.rejected_bytes

    @property
    def path(self) -> Path:
        return self._db.path

    @classmethod
    async def open(cls, path: str | os.PathLike[str]) -> Spool:
        """Open (or create) the spool; a damaged one is rebuilt, a vanished one noticed."""
        path = Path(path)
        marker, existed, size = await _offload.offload(_before_open, path)
        db = await Database.open(path, "spool", _SCHEMA, exclusive=True, tables=_TABLES)
        totals = await db.run(_totals)
        recovery = db.recovery
        if recovery is not None:
            recovered = recovery.recovered.get("items", 0)
            expected = marker.depth if marker is not None else None
            lost = None if expected is None else max(0, expected - recovered)
            recovery = attrs.evolve(recovery, expected=expected, lost=lost)
            log.error("%s", recovery.describe())
        else:
            recovery = noticed_loss(path, marker, existed, size, totals.depth)
        spool = cls(db, totals, recovery)
        if totals.depth:
            spool.rows_by_config, spool.newest_by_key = await db.run(_rows_by_config)
        await spool._mark(clean=False)
        return spool

    async def commit(
        self,
        append: Sequence[Row] = (),
        delete: Sequence[tuple[int, int]] = (),
        reject: Sequence[Rejection] = (),
        *,
        max_bytes: int | None = None,
        older_than: float | None = None,
        protect_upto: int = 0,
        protect: Container[int] = (),
    ) -> CommitOutcome:
        """One transaction: append rows, delete ``(seq, size)`` pairs that were delivered,
        park rejected rows, then drop the oldest rows past ``max_bytes`` or created before
        ``older_than``. Rows with ``seq <= protect_upto`` or in ``protect`` are in memory
        on their way to Core, so the cap never takes them. (``protect`` is only read, from
        the worker thread: the caller must not change it until the commit returns.)"""
        result = await self._db.run(
            _commit_sync,
            self._totals,
            list(append),
            list(delete),
            list(reject),
            max_bytes,
            older_than,
            (protect_upto, protect),
            self.rejected_caps,
        )
        dropped, self._totals = result
        depth = self._totals.depth
        if depth != self._marked and (
            depth == 0 or time.monotonic() - self._marked_at >= MARKER_EVERY
        ):
            await self._mark(clean=False)
        return CommitOutcome(dropped=sum(dropped.values()), dropped_by_config=dropped)

    async def probe(self, size: int = PROBE_BYTES) -> None:
        """Write ``size`` bytes and delete them in one transaction: SpoolError if the
        disk still refuses a batch's worth of new pages."""
        await self._db.run(_probe_sync, size)

    async def read_after(self, seq: int, limit: int) -> list[SpoolRow]:
        """Up to ``limit`` rows with ``seq`` greater than the given one, in order."""
        return await self._db.run(_read_sync, seq, limit)

    async def close(self) -> None:
        """Close, even from a cancelled scope, leaving a marker of what the spool holds."""
        with trio.CancelScope(shield=True):
            try:
                await self._db.close()
            finally:
                await self._mark(clean=True)

    async def _mark(self, *, clean: bool) -> None:
        totals = self._totals
        marker = SpoolMarker(totals.depth, totals.bytes, totals.rejected, clean, time.time())
        self._marked, self._marked_at = totals.depth, time.monotonic()
        await self._db.run_plain(marker.write, self._db.path)


# -- run in the worker thread -----------------------------------------------------------


def _before_open(path: Path) -> tuple[SpoolMarker | None, bool, int]:
    try:
        size = path.stat().st_size
    except OSError:  # missing, or an unusable place (opening it will say why)
        return SpoolMarker.read(path), False, 0
    return SpoolMarker.read(path), True, size


def _totals(con: sqlite3.Connection) -> _Totals:
    """Count everything; only at open and after an inconsistency, since it scans."""
    depth, size, max_seq = con.execute(
        "SELECT COUNT(*), COALESCE(SUM(length(payload)), 0), COALESCE(MAX(seq), 0) FROM items"
    ).fetchone()
    rejected, rejected_bytes, rejected_max = con.execute(
        "SELECT COUNT(*), COALESCE(SUM(length(payload)), 0), COALESCE(MAX(seq), 0) FROM rejected"
    ).fetchone()
    return _Totals(
        depth=depth,
        bytes=size,
        oldest=_oldest(con),
        max_seq=max(max_seq, rejected_max),
        rejected=rejected,
        rejected_bytes=rejected_bytes,
    )


def _probe_sync(con: sqlite3.Connection, size: int) -> None:
    con.execute("BEGIN IMMEDIATE")
    try:
        con.execute("INSERT INTO probe (bytes) VALUES (zeroblob(?))", (size,))
        con.execute("DELETE FROM probe")
        con.execute("COMMIT")
    except BaseException:
        rollback(con)
        raise


def _rows_by_config(con: sqlite3.Connection) -> tuple[dict[str, int], dict[str, int]]:
    """Rows per config id, and the newest seq per lane key."""
    counts: dict[str, int] = {}
    newest: dict[str, int] = {}
    for lane_key, rows, top in con.execute(
        "SELECT lane_key, COUNT(*), MAX(seq) FROM items GROUP BY lane_key"
    ):
        config_id = lane_key.partition("\x00")[0]
        counts[config_id] = counts.get(config_id, 0) + rows
        newest[lane_key] = top
    return counts, newest


def _oldest(con: sqlite3.Connection) -> float | None:
    row = con.execute("SELECT created FROM items ORDER BY seq LIMIT 1").fetchone()
    return None if row is None else float(row[0])


def _commit_sync(
    con: sqlite3.Connection,
    totals: _Totals,
    append: list[Row],
    delete: list[tuple[int, int]],
    reject: list[Rejection],
    max_bytes: int | None,
    older_than: float | None,
    protected: tuple[int, Container[int]],
    caps: RejectedCaps,
) -> tuple[dict[str, int], _Totals]:
    depth, size, max_seq = totals.depth, totals.bytes, totals.max_seq
    con.execute("BEGIN IMMEDIATE")
    try:
        consistent = True
        if append:
            consistent &= _append(con, append) == len(append)
            depth += len(append)
            size += sum(len(r.payload) for r in append)
            max_seq = max(max_seq, max(r.seq for r in append))
        gone = list(delete) + [(j.row.seq, len(j.row.payload)) for j in reject if j.spooled]
        if gone:
            consistent &= _delete(con, [seq for seq, _ in gone]) == len(gone)
            depth -= len(gone)
            size -= sum(n for _, n in gone)
        rejected, rejected_bytes, consistent_rejected = _park(con, totals, reject, caps)
        if reject:
            max_seq = max(max_seq, max(j.row.seq for j in reject))
        dropped: dict[str, int] = {}
        excess_bytes = 0 if max_bytes is None else size - max_bytes
        oldest = _oldest(con)
        if excess_bytes > 0 or (
            older_than is not None and oldest is not None and oldest < older_than
        ):
            dropped, freed = _drop_oldest(con, protected, excess_bytes, older_than)
            depth -= sum(dropped.values())
            size -= freed
            oldest = _oldest(con)
        # If a row we counted on was not there, recount rather than drift.
        if consistent and consistent_rejected:
            after = _Totals(depth, size, oldest, max_seq, rejected, rejected_bytes)
        else:
            after = _totals(con)
        con.execute("COMMIT")
    except BaseException:
        rollback(con)
        raise
    return dropped, after


def _park(
    con: sqlite3.Connection, totals: _Totals, reject: list[Rejection], caps: RejectedCaps
) -> tuple[int, int, bool]:
    """Store refused rows (large bodies as summaries), then apply the rejected table's
    caps (count, bytes, age; oldest first). Returns its new count and bytes, and False if
    those may be off (the caller then recounts)."""
    rejected, rejected_bytes = totals.rejected, totals.rejected_bytes
    if reject:
        rows = [_rejected_row(j, caps.body_max) for j in reject]
        con.executemany(
            "INSERT OR REPLACE INTO rejected "
            "(seq, kind, created, rejected_at, status, error, payload) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        rejected += len(rows)
        rejected_bytes += sum(len(r[6]) for r in rows)
    if not rejected:
        return rejected, rejected_bytes, True
    cutoff = time.time() - caps.max_age
    first = con.execute("SELECT rejected_at FROM rejected ORDER BY seq LIMIT 1").fetchone()
    if first is not None and first[0] < cutoff:
        cur = con.execute("DELETE FROM rejected WHERE rejected_at < ?", (cutoff,))
        if cur.rowcount:
            rejected, rejected_bytes = con.execute(
                "SELECT COUNT(*), COALESCE(SUM(length(payload)), 0) FROM rejected"
            ).fetchone()
    while rejected > caps.keep or rejected_bytes > caps.max_bytes:
        excess_rows = rejected - caps.keep
        excess_bytes = rejected_bytes - caps.max_bytes
        batch = con.execute(
            "SELECT seq, length(payload) FROM rejected ORDER BY seq LIMIT 256"
        ).fetchall()
        if not batch:
            return 0, 0, False
        last, freed, count = None, 0, 0
        for seq, length in batch:
            if count >= excess_rows and freed >= excess_bytes:
                break
            last, freed, count = seq, freed + length, count + 1
        if last is None:
            break
        con.execute("DELETE FROM rejected WHERE seq <= ?", (last,))
        rejected -= count
        rejected_bytes -= freed  # already counted as rejected, so not as dropped
    return rejected, rejected_bytes, True


def _rejected_row(j: Rejection, body_max: int) -> tuple[Any, ...]:
    payload, error = j.row.payload, j.error
    if len(payload) > body_max:
        payload = summarize(payload)
        error = f"{error} [body of {len(j.row.payload)} bytes kept as a summary]"
    return (j.row.seq, j.row.kind, j.row.created, j.rejected_at, j.status, error, payload)


def summarize(payload: bytes) -> bytes:
    """What is kept of a large refused body: its size, digest, ids and first bytes."""
    summary: dict[str, Any] = {
        "summary": True,
        "bytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
        "head": payload[:512].decode("utf-8", "replace"),
    }
    try:
        body = json.loads(payload)
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("telemetry_id", "event_id", "type", "device_id", "config_id", "timestamp"):
            if key in body:
                summary[key] = body[key]
        metrics = body.get("metrics")
        if isinstance(metrics, dict):
            summary["metrics"] = sorted(metrics)[:50]
    return json.dumps(summary, separators=(",", ":")).encode()


def _drop_oldest(
    con: sqlite3.Connection,
    protected: tuple[int, Container[int]],
    excess_bytes: int,
    older_than: float | None,
) -> tuple[dict[str, int], int]:
    """Delete the oldest unprotected rows while over the byte cap or older than the cutoff;
    returns the rows deleted per config id and the bytes freed."""
    cursor, protect = protected
    by_config: dict[str, int] = {}
    freed = 0
    while True:
        batch = con.execute(
            "SELECT seq, created, length(payload), lane_key FROM items WHERE seq > ? "
            "ORDER BY seq LIMIT 512",
            (cursor,),
        ).fetchall()
        doomed: list[int] = []
        last = None
        for seq, created, length, lane_key in batch:
            too_old = older_than is not None and created < older_than
            if excess_bytes - freed <= 0 and not too_old:
                break
            last = seq
            if seq in protect:
                continue
            doomed.append(seq)
            freed += length
            config_id = lane_key.partition("\x00")[0]
            by_config[config_id] = by_config.get(config_id, 0) + 1
        if doomed:
            _delete(con, doomed)
        if last is None or last != batch[-1][0]:
            break
        cursor = last
    return by_config, freed


def _read_sync(con: sqlite3.Connection, seq: int, limit: int) -> list[SpoolRow]:
    seqs, kinds, created, key_sizes, keys, sizes, payloads = con.execute(
        _READ, (seq, limit)
    ).fetchone()
    if seqs is None:
        return []
    rows: list[SpoolRow] = []
    at_key = at = 0
    for s, k, c, key_size, size in zip(
        seqs.split(","),
        kinds.split(","),
        created.split(","),
        key_sizes.split(","),
        sizes.split(","),
        strict=True,
    ):
        end_key, end = at_key + int(key_size), at + int(size)
        rows.append(
            SpoolRow(
                int(s),
                int(k),
                keys[at_key:end_key].decode(errors="replace"),
                float(c),
                payloads[at:end],
            )
        )
        at_key, at = end_key, end
    rows.sort(key=attrgetter("seq"))  # the aggregate keeps the subquery's order in practice
    return rows


def _append(con: sqlite3.Connection, rows: Sequence[Row]) -> int:
    """Insert ``rows`` (``_INSERTS``); returns how many were new."""
    largest = _INSERT_SIZES[-1]
    inserted = 0
    for start in range(0, len(rows), largest):
        chunk = rows[start : start + largest]
        size = next(size for size in _INSERT_SIZES if size >= len(chunk))
        values = [v for r in chunk for v in (r.seq, r.kind, r.lane_key, r.created, r.payload)]
        values.extend(values[-5:] * (size - len(chunk)))
        inserted += con.execute(_INSERTS[size], values).rowcount
    return inserted


def _delete(con: sqlite3.Connection, seqs: Sequence[int]) -> int:
    """Delete these rows in one statement; returns how many there were."""
    return con.execute(_DELETE, (json.dumps(seqs),)).rowcount
