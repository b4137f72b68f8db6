"""One SQLite file driven from trio: the shape shared by the spool, the command ledger
and the dev Core (docs/design.md, SQLite).

One connection per file, WAL with ``synchronous=NORMAL``, every call in a worker thread
behind a ``CapacityLimiter(1)`` (``_offload``), so the trio thread never blocks on disk
and calls never interleave. A call that is cancelled still finishes in its thread, so a
transaction commits or rolls back whole. Files are created 0600 in a 0700 directory:
they hold telemetry, command replies and configs.

Failures are classified (``classify``): a full disk, an I/O error, a file held by another
process and a damaged file each raise their own ``SpoolError`` subclass with a stable
code, naming the file's role, so the operator sees which file and why. A transaction is
rolled back only while one is open (``rollback``): SQLite ends it by itself on a full
disk or an I/O error, and a blind ROLLBACK would then replace the real cause with
"cannot rollback - no transaction is active".

A damaged file found at open is moved aside and what SQLite can still read of it is
copied into a fresh one (``_recovery``); ``Database.recovery`` then says what happened.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from . import _offload
from ._errors import SpoolBusy, SpoolCorrupt, SpoolError, SpoolFull, SpoolIOError

if TYPE_CHECKING:
    from ._recovery import Recovery, Table

__all__ = ["Database", "classify", "connect", "rollback"]

log = logging.getLogger("runtime.database")

T = TypeVar("T")

# SQLite's primary result codes (the low byte of an extended code).
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_IOERR, _SQLITE_CORRUPT = 5, 6, 10, 11
_SQLITE_FULL, _SQLITE_NOTADB = 13, 26
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def classify(exc: BaseException, what: str) -> SpoolError:
    """The ``SpoolError`` subclass for a failure of ``what`` (e.g. "spool /x/spool.db")."""
    if isinstance(exc, SpoolError):
        return exc
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        name = getattr(exc, "sqlite_errorname", None) or "SQLITE_ERROR"
        primary = code & 0xFF if isinstance(code, int) else None
        detail = f"{exc} ({name})"
        if primary == _SQLITE_FULL:
            return SpoolFull(f"{what}: disk full: {detail}")
        if primary == _SQLITE_IOERR:
            return SpoolIOError(f"{what}: I/O error: {detail}")
        if primary in (_SQLITE_BUSY, _SQLITE_LOCKED):
            return SpoolBusy(f"{what}: locked by another process: {detail}")
        if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
            return SpoolCorrupt(f"{what}: damaged: {detail}")
        return SpoolError(f"{what}: {detail}")
    if isinstance(exc, OSError):
        if exc.errno in _FULL_ERRNOS:
            return SpoolFull(f"{what}: disk full: {exc}")
        if exc.errno == errno.EIO:
            return SpoolIOError(f"{what}: I/O error: {exc}")
        return SpoolError(f"{what}: {exc}")
    return SpoolError(f"{what}: {type(exc).__name__}: {exc}")


def rollback(con: sqlite3.Connection) -> None:
    """End the open transaction, if there is one; never hides the error being handled."""
    if not con.in_transaction:
        return
    try:
        con.execute("ROLLBACK")
    except sqlite3.Error as exc:  # the caller re-raises the original error
        log.warning("ROLLBACK failed after an error: %s", exc)


def connect(path: Path, role: str, schema: str, *, exclusive: bool = False) -> sqlite3.Connection:
    """Open (creating, privately) the database at ``path``; runs in the worker thread.

    ``exclusive`` takes SQLite's exclusive lock for the connection's life, so a second
    process pointed at the same file fails here instead of interleaving with the first.
    """
    try:
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not path.exists():
                path.touch(mode=0o600)
        con = sqlite3.connect(path, timeout=0.2, check_same_thread=False, isolation_level=None)
    except (OSError, sqlite3.Error) as exc:
        raise classify(exc, f"cannot create the {role} at {path}") from exc
    try:
        if exclusive:
            con.execute("PRAGMA locking_mode=EXCLUSIVE")
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        con.executescript(schema)
        if exclusive:  # take the lock now
            con.execute("BEGIN IMMEDIATE")
            con.execute("COMMIT")
    except sqlite3.Error as exc:
        rollback(con)
        con.close()
        error = classify(exc, f"cannot use the {role} at {path}")
        if isinstance(error, SpoolBusy):
            error = SpoolBusy(f"{error.message} (another runtime holds it)")
        raise error from exc
    return con


class Database:
    """A connection plus the limiter that serialises its calls."""

    def __init__(
        self, con: sqlite3.Connection, path: Path, role: str, recovery: Recovery | None = None
    ) -> None:
        self.con = con
        self.path = path
        self.role = role
        self.recovery = recovery
        """What was done about a damaged file found at open; None if it was sound."""
        self._limiter = trio.CapacityLimiter(1)

    @classmethod
    async def open(
        cls,
        path: Path,
        role: str,
        schema: str,
        *,
        exclusive: bool = False,
        tables: Sequence[Table] | None = None,
    ) -> Database:
        """Open ``path``, failing with a classified ``SpoolError``.

        With ``tables``, a file SQLite finds damaged (at open or in its quick check) is
        moved aside with a timestamp and rebuilt from what can still be read of those
        tables instead (``_recovery``); ``recovery`` then reports it.
        """
        from ._recovery import open_or_recover  # it builds on connect() here

        if tables is None:
            con = await _offload.offload(partial(connect, exclusive=exclusive), path, role, schema)
            return cls(con, path, role)
        con, recovery = await _offload.offload(
            partial(open_or_recover, exclusive=exclusive, tables=tables), path, role, schema
        )
        return cls(con, path, role, recovery)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)`` in the worker thread."""
        try:
            return await _offload.offload(fn, self.con, *args, limiter=self._limiter)
        except SpoolError:
            raise
        except (sqlite3.Error, OSError) as exc:
            raise classify(exc, f"{self.role} {self.path}") from exc

    async def run_plain(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the worker thread, in turn with the connection's calls."""
        return await _offload.offload(fn, *args, limiter=self._limiter)

    async def close(self) -> None:
        """Close, even from a cancelled scope."""
        with trio.CancelScope(shield=True):
            await self.run(_close)


def _close(con: sqlite3.Connection) -> None:
    con.close()
