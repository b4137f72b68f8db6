"""One SQLite file driven from trio: the shape shared by the spool, the command ledger
and the dev Core (docs/design.md, SQLite).

One connection per file, WAL with ``synchronous=NORMAL``, every call in a worker thread
behind a ``CapacityLimiter(1)`` (``_offload``), so the trio thread never blocks on disk
and calls never interleave. A call that is cancelled still finishes in its thread, so a
transaction commits or rolls back whole. Files are created 0600 in a 0700 directory:
they hold telemetry, command replies and configs. Failures are ``SpoolError`` naming the
file's role, so the operator sees which file and why.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import trio

from . import _offload
from ._errors import SpoolError

__all__ = ["Database", "connect"]

T = TypeVar("T")


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
        raise SpoolError(f"cannot create the {role} at {path}: {exc}") from exc
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
        con.close()
        held = " (another runtime holds it)" if "locked" in str(exc) else ""
        raise SpoolError(f"cannot use the {role} at {path}: {exc}{held}") from exc
    return con


class Database:
    """A connection plus the limiter that serialises its calls."""

    def __init__(self, con: sqlite3.Connection, path: Path, role: str) -> None:
        self.con = con
        self.path = path
        self.role = role
        self._limiter = trio.CapacityLimiter(1)

    @classmethod
    async def open(cls, path: Path, role: str, schema: str, *, exclusive: bool = False) -> Database:
        con = await _offload.offload(partial(connect, exclusive=exclusive), path, role, schema)
        return cls(con, path, role)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)`` in the worker thread."""
        try:
            return await _offload.offload(fn, self.con, *args, limiter=self._limiter)
        except sqlite3.Error as exc:
            raise SpoolError(f"{self.role} {self.path}: {exc}") from exc

    async def close(self) -> None:
        """Close, even from a cancelled scope."""
        with trio.CancelScope(shield=True):
            await self.run(_close)


def _close(con: sqlite3.Connection) -> None:
    con.close()
