"""The command ledger: what became of each idempotency key, kept across restarts.

A command carrying ``X-PiPhi-Idempotency-Key`` is recorded as *started* (committed)
before it runs and as *done* with its reply after. A repeated key replays the stored
reply and never runs the command again; a key found *started* without an outcome means
an earlier attempt may have reached the device when the runtime stopped, so it is
reported, not silently re-run. Stored like the spool (``_database.Database``); a damaged
file is moved aside and rebuilt from what can be read (``recovery`` says what), so a bad
ledger never keeps the runtime down.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import attrs

from ._database import Database, rollback
from ._recovery import Recovery, Table

__all__ = ["CommandLedger", "LedgerEntry"]

log = logging.getLogger("runtime.ledger")

#: Keys older than this are forgotten (a retry a week later is a new command).
KEEP_SECONDS = 7 * 24 * 3600.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL,
    status INTEGER,
    reply TEXT,
    started REAL NOT NULL,
    finished REAL
);
"""


def _is_command(row: tuple[Any, ...]) -> bool:
    key, fingerprint, state, status, reply, started, finished = row
    return (
        type(key) is str
        and type(fingerprint) is str
        and state in ("started", "done")
        and (status is None or type(status) is int)
        and (reply is None or type(reply) is str)
        and isinstance(started, (int, float))
        and (finished is None or isinstance(finished, (int, float)))
    )


_TABLES = (
    Table(
        "commands",
        ("key", "fingerprint", "state", "status", "reply", "started", "finished"),
        _is_command,
    ),
)


@attrs.frozen
class LedgerEntry:
    key: str
    fingerprint: str
    state: Literal["started", "done"]
    status: int | None
    reply: dict[str, Any] | None
    started: float


class CommandLedger:
    def __init__(self, db: Database) -> None:
        self._db = db

    @property
    def recovery(self) -> Recovery | None:
        """What was done about a damaged ledger found at open; None if it was sound."""
        return self._db.recovery

    @classmethod
    @asynccontextmanager
    async def opened(cls, path: Path) -> AsyncIterator[CommandLedger]:
        db = await Database.open(path, "command ledger", _SCHEMA, tables=_TABLES)
        if db.recovery is not None:
            log.error("%s; keys lost may run again if Core retries them", db.recovery.describe())
        try:
            yield cls(db)
        finally:
            await db.close()

    async def begin(self, key: str, fingerprint: str) -> LedgerEntry | None:
        """Record ``key`` as started and return None; or return what is already known."""
        row = await self._db.run(_begin_sync, key, fingerprint, time.time())
        if row is None:
            return None
        fp, state, status, reply, started = row
        return LedgerEntry(key, fp, state, status, json.loads(reply) if reply else None, started)

    async def finish(self, key: str, status: int, reply: dict[str, Any]) -> None:
        await self._db.run(_finish_sync, key, status, json.dumps(reply, default=str), time.time())

    async def forget(self, key: str) -> None:
        """Drop ``key``: the command certainly did not run, so a retry may run it."""
        await self._db.run(_forget_sync, key)


def _begin_sync(
    con: sqlite3.Connection, key: str, fingerprint: str, now: float
) -> tuple[Any, ...] | None:
    con.execute("BEGIN IMMEDIATE")
    try:
        con.execute("DELETE FROM commands WHERE started < ?", (now - KEEP_SECONDS,))
        row = con.execute(
            "SELECT fingerprint, state, status, reply, started FROM commands WHERE key = ?",
            (key,),
        ).fetchone()
        if row is None:
            con.execute(
                "INSERT INTO commands (key, fingerprint, state, started) "
                "VALUES (?, ?, 'started', ?)",
                (key, fingerprint, now),
            )
        con.execute("COMMIT")
    except BaseException:
        rollback(con)
        raise
    return tuple(row) if row is not None else None


def _finish_sync(con: sqlite3.Connection, key: str, status: int, reply: str, now: float) -> None:
    con.execute(
        "UPDATE commands SET state = 'done', status = ?, reply = ?, finished = ? WHERE key = ?",
        (status, reply, now, key),
    )


def _forget_sync(con: sqlite3.Connection, key: str) -> None:
    con.execute("DELETE FROM commands WHERE key = ?", (key,))
