"""Damaged state files: moved aside, salvaged, and reported, so the runtime still starts.

A spool or command ledger that SQLite finds damaged at open (it cannot open it, or its
``quick_check`` fails) is renamed to ``<name>.corrupt-<UTC timestamp>`` together with its
``-wal`` and ``-shm`` files: it is never deleted. A fresh file takes its place, and every
row SQLite can still read from the damaged one is copied into it, table by table: the
scan steps over unreadable regions rather than stopping at the first. A file whose only
damage is its 16-byte magic string is read through a patched scratch copy (removed
afterwards). What was done is a ``Recovery``: which file, why, where it went, how many
rows came back; the spool adds how many it expected from its marker (``SpoolMarker``).

Everything here runs in the worker thread (``_offload``), before the runtime starts.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import attrs

from ._database import classify, connect, rollback
from ._errors import SpoolCorrupt

__all__ = ["Recovery", "SpoolMarker", "Table", "open_or_recover"]

log = logging.getLogger("runtime.recovery")

_MAGIC = b"SQLite format 3\x00"
#: Read errors tolerated while salvaging one file, each costing a few probing queries.
_MAX_PROBES = 20_000
_BATCH = 500

Reason = Literal["corrupt", "emptied", "missing"]


@attrs.frozen
class Table:
    """A table to salvage: its columns, and a check that a row read back is well formed."""

    name: str
    columns: tuple[str, ...]
    check: Callable[[tuple[Any, ...]], bool] = lambda _row: True


@attrs.frozen
class Recovery:
    """What was done about a damaged, emptied or missing state file found at start-up."""

    role: str
    path: str
    reason: Reason
    detail: str
    moved_to: str | None
    """Where the damaged file now is (never deleted); None when there was nothing to keep."""
    recovered: Mapping[str, int]
    """Rows copied into the fresh file, per table."""
    skipped: int
    """Unreadable regions (or malformed rows) the salvage stepped over."""
    expected: int | None = None
    """Rows the file held by its last marker (the spool's undelivered items), if known."""
    lost: int | None = None
    """``expected`` less what came back, when ``expected`` is known."""
    at: float = attrs.field(factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "path": self.path,
            "reason": self.reason,
            "detail": self.detail,
            "moved_to": self.moved_to,
            "recovered": dict(self.recovered),
            "skipped": self.skipped,
            "expected": self.expected,
            "lost": self.lost,
            "at": datetime.fromtimestamp(self.at, UTC).isoformat(),
        }

    def describe(self) -> str:
        kept = ", ".join(f"{n} {table}" for table, n in self.recovered.items()) or "nothing"
        lost = "unknown" if self.lost is None else str(self.lost)
        where = f"; the damaged file is kept at {self.moved_to}" if self.moved_to else ""
        return (
            f"{self.role} {self.path} was {self.reason} ({self.detail}): "
            f"recovered {kept}, lost {lost}{where}"
        )


# -- open, or move aside and rebuild -----------------------------------------------------


def open_or_recover(
    path: Path, role: str, schema: str, *, exclusive: bool, tables: Sequence[Table]
) -> tuple[sqlite3.Connection, Recovery | None]:
    """Open ``path``; if SQLite finds it damaged, rebuild it (see the module docstring).
    The caller logs the ``Recovery`` (once it knows what was expected)."""
    try:
        con = connect(path, role, schema, exclusive=exclusive)
    except SpoolCorrupt as err:
        return _rebuild(path, role, schema, exclusive, tables, err.message)
    try:
        problem = _quick_check(con)
    except sqlite3.Error as exc:
        error = classify(exc, f"{role} {path}")
        if not isinstance(error, SpoolCorrupt):
            con.close()
            raise error from exc
        problem = error.message
    if problem is None:
        return con, None
    con.close()
    return _rebuild(path, role, schema, exclusive, tables, problem)


def _quick_check(con: sqlite3.Connection) -> str | None:
    rows = con.execute("PRAGMA quick_check(5)").fetchall()
    found = [str(r[0]) for r in rows]
    return None if found == ["ok"] else "quick_check: " + "; ".join(found)


def _rebuild(
    path: Path, role: str, schema: str, exclusive: bool, tables: Sequence[Table], detail: str
) -> tuple[sqlite3.Connection, Recovery]:
    moved = move_aside(path)
    con = connect(path, role, schema, exclusive=exclusive)
    try:
        recovered, skipped = salvage(moved, con, tables)
    except BaseException:
        con.close()
        raise
    return con, Recovery(role, str(path), "corrupt", detail, str(moved), recovered, skipped)


def move_aside(path: Path) -> Path:
    """Rename ``path`` (and its -wal/-shm) to ``<name>.corrupt-<UTC timestamp>``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    try:
        os.replace(path, target)
        for suffix in ("-wal", "-shm"):
            companion = Path(f"{path}{suffix}")
            if companion.exists():
                os.replace(companion, Path(f"{target}{suffix}"))
    except OSError as exc:
        raise classify(exc, f"cannot move the damaged {path} aside") from exc
    return target


# -- salvage -------------------------------------------------------------------------------


def salvage(
    source: Path, dest: sqlite3.Connection, tables: Sequence[Table]
) -> tuple[dict[str, int], int]:
    """Copy what can be read of ``tables`` from ``source`` into ``dest``; returns the rows
    copied per table and the unreadable regions stepped over."""
    try:
        return _salvage_from(source, dest, tables)
    except _NotADatabase:
        scratch = _patched_copy(source)
        if scratch is None:
            return {t.name: 0 for t in tables}, 1
        try:
            return _salvage_from(scratch, dest, tables)
        except _NotADatabase:
            return {t.name: 0 for t in tables}, 1
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{scratch}{suffix}").unlink(missing_ok=True)


class _NotADatabase(Exception):
    pass


def _salvage_from(
    source: Path, dest: sqlite3.Connection, tables: Sequence[Table]
) -> tuple[dict[str, int], int]:
    uri = f"file:{urllib.parse.quote(str(source))}?mode=ro"
    try:
        src = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise _NotADatabase(str(exc)) from exc
    try:
        # Tolerates a file shorter than its header says (a truncated copy), read-only.
        src.execute("PRAGMA writable_schema=ON")
        try:
            src.execute("SELECT COUNT(*) FROM sqlite_schema").fetchone()
        except sqlite3.Error as exc:
            if getattr(exc, "sqlite_errorname", "") == "SQLITE_NOTADB":
                raise _NotADatabase(str(exc)) from exc
        counts: dict[str, int] = {}
        skipped = 0
        for table in tables:
            counts[table.name], missed = _copy_table(src, dest, table)
            skipped += missed
        return counts, skipped
    finally:
        src.close()


def _copy_table(src: sqlite3.Connection, dest: sqlite3.Connection, table: Table) -> tuple[int, int]:
    columns = ", ".join(table.columns)
    insert = (
        f"INSERT OR IGNORE INTO {table.name} ({columns}) "
        f"VALUES ({', '.join('?' for _ in table.columns)})"
    )
    copied = skipped = 0
    batch: list[tuple[Any, ...]] = []
    scan = _tolerant_scan(src, table.name, columns)
    for row in scan:
        if row is None or not table.check(row):
            skipped += 1
            continue
        batch.append(row)
        if len(batch) >= _BATCH:
            copied += _insert(dest, insert, batch)
            batch = []
    if batch:
        copied += _insert(dest, insert, batch)
    return copied, skipped


def _insert(dest: sqlite3.Connection, sql: str, rows: list[tuple[Any, ...]]) -> int:
    dest.execute("BEGIN IMMEDIATE")
    try:
        cur = dest.executemany(sql, rows)
        dest.execute("COMMIT")
    except BaseException:
        rollback(dest)
        raise
    return cur.rowcount


def _tolerant_scan(
    src: sqlite3.Connection, table: str, columns: str
) -> Iterator[tuple[Any, ...] | None]:
    """Every readable row of ``table`` in rowid order; None for each region skipped.

    On a read error after rowid ``r`` it probes ``r + 1``, ``r + 2``, ``r + 4``, ... for
    the next readable row and resumes there, so one damaged page costs its own rows only
    (and perhaps a few after it), not the rest of the table.
    """
    after = -(1 << 62)
    resumed_at: int | None = None
    probes = 0
    while True:
        try:
            for row in src.execute(
                f"SELECT rowid, {columns} FROM {table} WHERE rowid > ? ORDER BY rowid", (after,)
            ):
                if row[0] <= after:  # a damaged page read as cells: the order broke
                    raise sqlite3.DatabaseError("rowids out of order")
                after = row[0]
                yield tuple(row[1:])
            return
        except sqlite3.Error:
            yield None
        if resumed_at is not None and after == resumed_at - 1:
            after = resumed_at  # the row it resumed at is itself unreadable: step over it
        found = None
        step = 1
        while found is None and step < (1 << 62) and probes < _MAX_PROBES:
            probes += 1
            try:
                found = src.execute(
                    f"SELECT rowid FROM {table} WHERE rowid > ? ORDER BY rowid LIMIT 1",
                    (after + step,),
                ).fetchone() or (None,)
            except sqlite3.Error:
                step *= 2
        if found is None or found[0] is None:
            return
        resumed_at = found[0]
        after = found[0] - 1


def _patched_copy(source: Path) -> Path | None:
    """A scratch copy of ``source`` with SQLite's magic string restored, if the rest of
    its header is plausible (page size, fixed payload fractions); else None."""
    try:
        with source.open("rb") as handle:
            header = handle.read(100)
    except OSError:
        return None
    if len(header) < 100 or header[:16] == _MAGIC:
        return None
    page_size = int.from_bytes(header[16:18], "big")
    plausible_size = page_size == 1 or (
        512 <= page_size <= 32768 and not page_size & (page_size - 1)
    )
    if not plausible_size or header[21:24] != b"\x40\x20\x20":
        return None
    scratch = source.with_name(source.name + ".salvage")
    try:
        shutil.copyfile(source, scratch)
        wal = Path(f"{source}-wal")
        if wal.exists():
            shutil.copyfile(wal, Path(f"{scratch}-wal"))
        with scratch.open("r+b") as handle:
            handle.write(_MAGIC)
    except OSError:
        for suffix in ("", "-wal"):
            Path(f"{scratch}{suffix}").unlink(missing_ok=True)
        return None
    return scratch


# -- the spool's marker --------------------------------------------------------------------


@attrs.frozen
class SpoolMarker:
    """What the spool held when last noted, kept beside it (``<spool>.marker.json``), so a
    spool that vanished or shrank to nothing since is noticed at the next start."""

    depth: int
    bytes: int
    rejected: int
    clean: bool
    """Written at a clean shutdown (else: while running, at most a few seconds old)."""
    at: float

    @staticmethod
    def path_for(spool: Path) -> Path:
        return spool.with_name(spool.name + ".marker.json")

    @classmethod
    def read(cls, spool: Path) -> SpoolMarker | None:
        try:
            data = json.loads(cls.path_for(spool).read_text(encoding="utf-8"))
            return cls(
                depth=int(data["depth"]),
                bytes=int(data["bytes"]),
                rejected=int(data.get("rejected", 0)),
                clean=bool(data.get("clean", False)),
                at=float(data.get("at", 0.0)),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, spool: Path, *, sync: bool = False) -> bool:
        """Write atomically (a temp file renamed over it); False if the disk refused."""
        target = self.path_for(spool)
        tmp = target.with_name(target.name + ".tmp")
        body = json.dumps(attrs.asdict(self), separators=(",", ":"))
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, body.encode())
                if sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
        except OSError:
            tmp.unlink(missing_ok=True)
            return False
        return True


def noticed_loss(
    spool: Path, marker: SpoolMarker | None, existed: bool, size: int, depth: int
) -> Recovery | None:
    """A spool that held rows by its marker and holds none now: report the loss."""
    if marker is None or marker.depth <= 0 or depth > 0:
        return None
    when = "at the last clean shutdown" if marker.clean else "when last noted"
    if not existed:
        reason: Reason = "missing"
        detail = f"the file is gone; it held {marker.depth} undelivered items {when}"
    else:
        reason = "emptied"
        detail = f"the file ({size} bytes) holds no items; it held {marker.depth} {when}"
    recovery = Recovery(
        "spool", str(spool), reason, detail, None, {}, 0, marker.depth, marker.depth
    )
    log.error("%s", recovery.describe())
    return recovery
