"""A real local PiPhi Core for developing and testing integrations.

``DevCore`` is ``FakeCore`` (``runtime._fakecore``: Core's endpoints, auth checks,
de-duplication, simulated trouble) with what a developer needs on top: the telemetry and
events it accepts are stored in SQLite (through ``FakeCore.store()``), so they survive a
restart and can be queried, and an admin API, on a port of its own that never goes down,
manages device configs, pushes snapshots (with the next generation) to a runtime's
``/config/sync``, answers queries about what arrived, and starts and ends trouble:

- ``GET /admin/stats``: counts (telemetry, events, devices reporting, duplicates,
  refused) and the trouble now;
- ``GET /admin/telemetry?device_id=&config_id=&limit=``, ``GET /admin/events?type=&device_id=``:
  what was stored, oldest first;
- ``GET /admin/configs``, ``POST /admin/configs`` (add or replace; ``id`` required),
  ``DELETE /admin/configs/<id>``: the device configs Core holds;
- ``POST /admin/push?runtime=URL``: the next-generation snapshot to a runtime's ``/config/sync``;
- ``POST /admin/trouble`` ``{mode, seconds, retry_after, delay}``: start trouble (modes as
  ``Trouble``), ``none`` ends it.

Run it with ``piphi-runtime devcore`` or, in tests, ``await nursery.start(core.serve)``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import attrs
import httpx
import trio
from hypercorn.trio import serve as hypercorn_serve
from quart import Response, request
from quart.typing import RouteCallable
from quart_trio import QuartTrio

from ._contract import iso
from ._contract.core import CONTAINER_HEADER, TOKEN_HEADER
from ._database import Database
from ._fakecore import TROUBLE_MODES, FakeCore, Kind, Rejected, Trouble
from ._serve import hypercorn_config

__all__ = ["DevCore", "Trouble"]

T = TypeVar("T")
_RECENT = 1000
"""Payloads the data port also keeps in memory (SQLite has them all)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS telemetry (
    telemetry_id TEXT PRIMARY KEY, device_id TEXT, config_id TEXT, container_id TEXT,
    integration_id TEXT, timestamp TEXT, body TEXT NOT NULL, received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS telemetry_device ON telemetry (device_id, received_at);
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY, type TEXT, device_id TEXT, config_id TEXT, severity TEXT,
    body TEXT NOT NULL, received_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS configs (
    id TEXT PRIMARY KEY, body TEXT NOT NULL, updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class _StoringCore(FakeCore):
    """DevCore's data port: FakeCore's endpoints, auth and trouble, payloads in SQLite."""

    def __init__(self, owner: DevCore, token: str | None) -> None:
        super().__init__(token=token, require_container=True, limit=_RECENT)
        self._owner = owner

    async def store(self, kind: Kind, payload: dict[str, Any], headers: Mapping[str, str]) -> bool:
        """Insert, unless SQLite already has its id; a payload too thin to query is refused."""
        now = time.time()
        if kind == "event":
            if not payload.get("event_id") or not payload.get("type"):
                raise Rejected("an event needs event_id and type")
            return await self._owner._db(_store_event, payload, now)
        if not payload.get("device_id"):
            raise Rejected("telemetry needs a JSON object with device_id")
        key = payload.get("telemetry_id") or f"{payload['device_id']}@{payload.get('timestamp')}"
        return await self._owner._db(_store_telemetry, str(key), payload, now)

    async def config_rows(self, container_id: str | None) -> list[Any]:
        owner = self._owner
        return [
            {
                "id": c["id"],
                "container_id": owner.container_id,
                "integration_id": owner.integration_id,
                "config_data": c,
            }
            for c in await owner.configs()
        ]


class DevCore:
    """A local Core. ``token``: when set, runtime calls without it get 401.

    ``data`` is the data port (a ``FakeCore``): its faults (``status``, ``delay``,
    ``answer``, ...) can be scripted too."""

    def __init__(
        self,
        db_path: str | Path = ":memory:",
        *,
        container_id: str = "dev-container",
        integration_id: str = "dev-integration",
        token: str | None = "dev-token",
    ) -> None:
        self.db_path = str(db_path)
        self.container_id = container_id
        self.integration_id = integration_id
        self.data: FakeCore = _StoringCore(self, token or None)
        self.data_url = ""
        self.admin_url = ""
        self._database: Database | None = None
        self.app = self._build_app()

    @property
    def token(self) -> str | None:
        return self.data.token

    @token.setter
    def token(self, token: str | None) -> None:
        self.data.token = token or None

    @property
    def trouble(self) -> Trouble:
        return self.data.trouble

    # -- storage ---------------------------------------------------------------------------

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        assert self._database is not None, "DevCore is not serving"
        return await self._database.run(fn, *args)

    async def telemetry(
        self, *, device_id: str | None = None, config_id: str | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Stored telemetry payloads, oldest first."""
        return await self._db(_select, "telemetry", device_id, config_id, None, limit)

    async def events(
        self, *, event_type: str | None = None, device_id: str | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        return await self._db(_select, "events", device_id, None, event_type, limit)

    async def stats(self) -> dict[str, Any]:
        """What SQLite holds, and the data port's counters (``refused``: answered 503/429)."""
        counts = await self._db(_counts)
        data = self.data
        return {
            **counts,
            "duplicates": data.duplicates,
            "refused": data.overloaded,
            "trouble": attrs.asdict(data.trouble),
        }

    async def configs(self) -> list[dict[str, Any]]:
        return await self._db(_configs)

    async def put_config(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """Add or replace a device config (``id`` required)."""
        if not isinstance(config.get("id"), str) or not config["id"]:
            raise ValueError("a config needs a non-empty string id")
        body = {"config_id": config["id"], **config}
        await self._db(_put_config, body, time.time())
        return body

    async def remove_config(self, config_id: str) -> bool:
        return bool(await self._db(_remove_config, config_id))

    async def snapshot(self) -> dict[str, Any]:
        """The next-generation snapshot of every config, as Core would push it."""
        generation = await self._db(_next_generation)
        configs = await self.configs()
        return {
            "schema_version": 1,
            "container_id": self.container_id,
            "integration_id": self.integration_id,
            "reason": "devcore_push",
            "generation": generation,
            "updated_at": time.time(),
            "configs": [
                {"container_id": self.container_id, "integration_id": self.integration_id, **c}
                for c in configs
            ],
            "deleted_config_ids": [],
        }

    async def push(self, runtime_url: str) -> dict[str, Any]:
        """Send the next snapshot to a runtime's ``/config/sync``; return its answer."""
        snapshot = await self.snapshot()
        async with httpx.AsyncClient(base_url=runtime_url, timeout=30) as client:
            response = await client.post(
                "/config/sync", json=snapshot, headers=self.runtime_headers()
            )
        body: dict[str, Any] = response.json()
        return body

    def runtime_headers(self) -> dict[str, str]:
        """The headers Core sends on every request to a runtime."""
        headers = {CONTAINER_HEADER: self.container_id}
        if self.token:
            headers[TOKEN_HEADER] = self.token
        return headers

    def set_trouble(self, trouble: Trouble) -> None:
        """Change what the data port does; ``refuse`` closes it until the trouble ends."""
        self.data.set_trouble(trouble)

    # -- serving ---------------------------------------------------------------------------

    async def serve(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        admin_port: int = 0,
        task_status: trio.TaskStatus[DevCore] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve the data port (what runtimes call) and the admin port until cancelled."""
        self._database = database = await Database.open(Path(self.db_path), "dev Core", _SCHEMA)
        try:
            async with trio.open_nursery() as nursery:
                self.admin_url = await nursery.start(
                    partial(_serve_http, self.app, host, admin_port)
                )
                self.data.host, self.data.port = host, port
                await nursery.start(self.data.serve)
                self.data_url = self.data.url
                task_status.started(self)
        finally:
            await database.close()
            self._database = None

    # -- the admin API ---------------------------------------------------------------------

    def _build_app(self) -> QuartTrio:
        app = QuartTrio("piphi-devcore")
        app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024
        routes: list[tuple[str, str, RouteCallable]] = [
            ("GET", "/admin/stats", self._admin_stats),
            ("GET", "/admin/telemetry", self._admin_telemetry),
            ("GET", "/admin/events", self._admin_events),
            ("GET", "/admin/configs", self._admin_configs),
            ("POST", "/admin/configs", self._admin_put_config),
            ("DELETE", "/admin/configs/<config_id>", self._admin_remove_config),
            ("POST", "/admin/push", self._admin_push),
            ("POST", "/admin/trouble", self._admin_trouble),
        ]
        for method, rule, view in routes:
            app.add_url_rule(rule, f"{method} {rule}", view, methods=[method])
        return app

    async def _admin_stats(self) -> Response:
        return _json(await self.stats())

    async def _admin_telemetry(self) -> Response:
        args = request.args
        limit = args.get("limit", "1000")
        if not limit.isdigit():
            return _problem(422, "limit is a whole number")
        return _json(
            await self.telemetry(
                device_id=args.get("device_id"), config_id=args.get("config_id"), limit=int(limit)
            )
        )

    async def _admin_events(self) -> Response:
        args = request.args
        return _json(
            await self.events(event_type=args.get("type"), device_id=args.get("device_id"))
        )

    async def _admin_configs(self) -> Response:
        return _json(await self.configs())

    async def _admin_put_config(self) -> Response:
        body = await request.get_json(force=True, silent=True)
        try:
            return _json(await self.put_config(body if isinstance(body, dict) else {}))
        except ValueError as exc:
            return _problem(422, str(exc))

    async def _admin_remove_config(self, config_id: str) -> Response:
        return _json({"removed": await self.remove_config(config_id)})

    async def _admin_push(self) -> Response:
        runtime = request.args.get("runtime")
        if not runtime:
            return _problem(422, "name the runtime: /admin/push?runtime=http://host:port")
        try:
            return _json(await self.push(runtime))
        except httpx.HTTPError as exc:
            return _problem(502, f"the runtime did not take the snapshot: {exc}")

    async def _admin_trouble(self) -> Response:
        body = await request.get_json(force=True, silent=True)
        body = body if isinstance(body, dict) else {}
        mode = body.get("mode", "none")
        if mode not in TROUBLE_MODES:
            return _problem(422, f"mode is one of {', '.join(TROUBLE_MODES)}")
        try:
            seconds = float(body.get("seconds") or 0)
            trouble = Trouble(
                mode=mode,
                retry_after=float(body.get("retry_after", 1.0)),
                delay=float(body.get("delay", 2.0)),
                until=trio.current_time() + seconds if seconds > 0 else None,
            )
        except (TypeError, ValueError):
            return _problem(422, "seconds, retry_after and delay are numbers")
        self.set_trouble(trouble)
        answer = attrs.asdict(self.trouble)
        if trouble.until is not None:  # trio time means nothing outside: a UTC moment
            answer["until"] = iso(time.time() + seconds)
        return _json(answer)


async def _serve_http(
    app: QuartTrio,
    host: str,
    port: int,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    # Quiet: its bound URL is on the DevCore object.
    config = hypercorn_config(f"{host}:{port}", graceful_timeout=0.5, quiet=True)
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(partial(hypercorn_serve, app, config))
        task_status.started(urls[0])


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body, default=str), status=status, content_type="application/json")


def _problem(status: int, detail: str) -> Response:
    return Response(
        json.dumps({"type": "about:blank", "status": status, "detail": detail}),
        status=status,
        content_type="application/problem+json",
    )


# -- SQLite, in the worker thread ------------------------------------------------------------


def _store_telemetry(con: sqlite3.Connection, key: str, body: dict[str, Any], now: float) -> bool:
    cur = con.execute(
        "INSERT OR IGNORE INTO telemetry VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            key,
            body.get("device_id"),
            body.get("config_id"),
            body.get("container_id"),
            body.get("integration_id"),
            body.get("timestamp"),
            json.dumps(body),
            now,
        ),
    )
    return cur.rowcount == 1


def _store_event(con: sqlite3.Connection, body: dict[str, Any], now: float) -> bool:
    cur = con.execute(
        "INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            body["event_id"],
            body.get("type"),
            body.get("device_id"),
            body.get("config_id"),
            body.get("severity"),
            json.dumps(body),
            now,
        ),
    )
    return cur.rowcount == 1


def _select(
    con: sqlite3.Connection,
    table: str,
    device_id: str | None,
    config_id: str | None,
    event_type: str | None,
    limit: int,
) -> list[dict[str, Any]]:
    where, args = [], []
    if device_id:
        where.append("device_id = ?")
        args.append(device_id)
    if config_id:
        where.append("config_id = ?")
        args.append(config_id)
    if event_type:
        where.append("type = ?")
        args.append(event_type)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    rows = con.execute(
        f"SELECT body FROM {table} {clause} ORDER BY received_at, rowid LIMIT ?",
        (*args, limit),
    ).fetchall()
    return [json.loads(body) for (body,) in rows]


def _counts(con: sqlite3.Connection) -> dict[str, int]:
    (telemetry,) = con.execute("SELECT COUNT(*) FROM telemetry").fetchone()
    (events,) = con.execute("SELECT COUNT(*) FROM events").fetchone()
    (devices,) = con.execute("SELECT COUNT(DISTINCT device_id) FROM telemetry").fetchone()
    return {"telemetry": telemetry, "events": events, "devices_reporting": devices}


def _configs(con: sqlite3.Connection) -> list[dict[str, Any]]:
    return [json.loads(b) for (b,) in con.execute("SELECT body FROM configs ORDER BY id")]


def _put_config(con: sqlite3.Connection, body: dict[str, Any], now: float) -> None:
    con.execute(
        "INSERT OR REPLACE INTO configs VALUES (?, ?, ?)", (body["id"], json.dumps(body), now)
    )


def _remove_config(con: sqlite3.Connection, config_id: str) -> int:
    return con.execute("DELETE FROM configs WHERE id = ?", (config_id,)).rowcount


def _next_generation(con: sqlite3.Connection) -> int:
    row = con.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
    generation = (int(row[0]) if row else 0) + 1
    con.execute("INSERT OR REPLACE INTO meta VALUES ('generation', ?)", (str(generation),))
    return generation
