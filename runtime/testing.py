"""Testing actors and integrations built on this runtime; also a pytest plugin.

Installed with the package, the plugin gives every test suite (registered through the
``pytest11`` entry point, so nothing to import or configure):

- ``fake_core``: a ``FakeCore`` on 127.0.0.1 in the test's nursery: Core's endpoints with
  faults to script (refused connections, 503/429 with ``Retry-After``, slow answers, a
  fixed status, dropped connections, a per-request ``answer`` hook) and what it accepted
  kept in memory, for tests of delivery without SQLite (override ``fake_core_class`` to
  serve a subclass);
- ``devcore``: a real local Core (``runtime.devcore.DevCore``, a ``FakeCore`` storing in
  SQLite, with an admin API) on 127.0.0.1, in the test's nursery, with a fresh database;
- ``run_integration``: ``async with run_integration(integration) as rt:`` serves an
  integration in process against that Core (hypercorn on 127.0.0.1, managed mode) and
  gives ``rt.url``, ``rt.http`` (an httpx client sending Core's headers) and
  ``await rt.configure(*configs)`` (adds configs to Core and pushes the snapshot).

Builders (``config_payload``, ``snapshot_payload``) and assertions
(``assert_telemetry_sent``, ``assert_event_sent``, ``assert_entity_shape``,
``assert_refresh_receipt``) work with any of them. ``RecordingSink`` keeps what actors
emit in memory, for tests of one actor without HTTP. ``H11Server`` is the small trio + h11
server under ``FakeCore``, for fakes of devices an actor talks to.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import httpx
import trio

from ._fakecore import Answer, FakeCore, H11Server, Kind, Received, Rejected, Trouble
from ._nursery import open_actor_nursery
from ._sink import EventRecord, TelemetryRecord

T = TypeVar("T")

if TYPE_CHECKING:
    from .devcore import DevCore

__all__ = [
    "Answer",
    "FakeCore",
    "H11Server",
    "Kind",
    "Received",
    "RecordingSink",
    "Rejected",
    "RunningIntegration",
    "Trouble",
    "assert_entity_shape",
    "assert_event_sent",
    "assert_refresh_receipt",
    "assert_telemetry_sent",
    "config_payload",
    "open_actor_nursery",
    "snapshot_payload",
]


class RecordingSink:
    """A ``Sink`` that keeps what actors emit, in memory, for assertions.

    Bounded (``limit`` records of each kind, oldest dropped) so a long test cannot grow
    without end; ``telemetry_count`` and ``event_count`` count everything ever received.
    """

    def __init__(self, limit: int = 100_000) -> None:
        self.telemetry_records: deque[TelemetryRecord] = deque(maxlen=limit)
        self.event_records: deque[EventRecord] = deque(maxlen=limit)
        self.telemetry_count = 0
        self.event_count = 0

    def telemetry(self, record: TelemetryRecord) -> None:
        self.telemetry_records.append(record)
        self.telemetry_count += 1

    def event(self, record: EventRecord) -> None:
        self.event_records.append(record)
        self.event_count += 1

    def admit(self) -> bool:
        return True

    def events(
        self, event_type: str | None = None, device_id: str | None = None
    ) -> list[EventRecord]:
        """Recorded events, optionally only of one type and/or device."""
        return [
            e
            for e in self.event_records
            if (event_type is None or e.event_type == event_type)
            and (device_id is None or e.device_id == device_id)
        ]

    def event_types(self, device_id: str | None = None) -> list[str]:
        return [e.event_type for e in self.events(device_id=device_id)]

    def telemetry_for(self, device_id: str) -> list[TelemetryRecord]:
        return [t for t in self.telemetry_records if t.device_id == device_id]


# -- builders ---------------------------------------------------------------------------


def config_payload(config_id: str, **fields: Any) -> dict[str, Any]:
    """One device config as Core sends it: ``config_payload("plug-1", host="10.0.0.5")``."""
    return {"id": config_id, "config_id": fields.pop("config_id", config_id), **fields}


def snapshot_payload(
    *configs: Mapping[str, Any],
    generation: int = 1,
    container_id: str = "dev-container",
    deleted: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A ``/config/sync`` body."""
    return {
        "schema_version": 1,
        "generation": generation,
        "container_id": container_id,
        "configs": [dict(c) for c in configs],
        "deleted_config_ids": list(deleted),
    }


# -- assertions ---------------------------------------------------------------------------


async def assert_telemetry_sent(
    core: DevCore,
    *,
    device_id: str | None = None,
    config_id: str | None = None,
    metric: str | None = None,
    at_least: int = 1,
    within: float = 0.0,
) -> list[dict[str, Any]]:
    """Core stored at least ``at_least`` telemetry payloads matching, waiting up to
    ``within`` seconds for them (of the test's clock: real, or trio's virtual one);
    returns them."""

    async def matching() -> list[dict[str, Any]]:
        found = await core.telemetry(device_id=device_id, config_id=config_id)
        return [t for t in found if metric is None or metric in t.get("metrics", {})]

    found = await _waited(
        core.data.next_arrival, matching, lambda found: len(found) >= at_least, within
    )
    assert len(found) >= at_least, (
        f"expected >= {at_least} telemetry payloads for device_id={device_id!r} "
        f"config_id={config_id!r} metric={metric!r}; Core has {len(found)}"
    )
    for payload in found:
        for field in ("device_id", "config_id", "container_id", "metrics", "timestamp"):
            assert field in payload, f"telemetry payload without {field}: {payload}"
    return found


async def assert_event_sent(
    core: DevCore, event_type: str, *, device_id: str | None = None, within: float = 0.0
) -> list[dict[str, Any]]:
    """Core stored an event of ``event_type``, waiting up to ``within`` seconds for it."""

    async def matching() -> list[dict[str, Any]]:
        return await core.events(event_type=event_type, device_id=device_id)

    found = await _waited(core.data.next_arrival, matching, bool, within)
    assert found, f"Core has no {event_type!r} event for device_id={device_id!r}"
    return found


async def _waited(
    arrival: Callable[[], Awaitable[None]],
    read: Callable[[], Awaitable[T]],
    done: Callable[[T], object],
    within: float,
) -> T:
    """``read()`` again at each ``arrival()`` (a payload reaching Core), until ``done``
    says so or ``within`` seconds have passed; the last read."""
    value = await read()
    with trio.move_on_after(within):
        while not done(value):
            await arrival()
            value = await read()
    return value


_ENTITY_FIELDS = (
    "id",
    "name",
    "capabilities",
    "config_id",
    "device_id",
    "device_type",
    "device_class",
    "entity_type",
    "available_commands",
    "dashboard",
    "metadata",
)


def assert_entity_shape(entity: Mapping[str, Any]) -> None:
    """An entity has every field Core reads (docs/contract.md, ``/entities``)."""
    missing = [f for f in _ENTITY_FIELDS if f not in entity]
    assert not missing, f"entity {entity.get('id')!r} lacks {missing}"
    assert isinstance(entity["capabilities"], list)
    dashboard = entity["dashboard"]
    for field in ("allowed_widgets", "default_widget", "recommended_widgets"):
        assert field in dashboard, f"entity dashboard lacks {field}"


def assert_refresh_receipt(
    body: Mapping[str, Any], request_id: str, *, status: str = "refreshed"
) -> None:
    """A ``/state?refresh=true`` answer carries a receipt for ``request_id``."""
    receipt = body.get("refresh")
    assert isinstance(receipt, Mapping), f"no refresh receipt in {body}"
    assert receipt.get("request_id") == request_id
    assert receipt.get("status") == status, receipt
    assert receipt.get("performed") is (status == "refreshed"), receipt
    if status == "refreshed":
        assert receipt.get("observed_at") and receipt.get("source"), receipt


@attrs.define
class RunningIntegration:
    """An integration served in process against the dev Core."""

    url: str
    http: httpx.AsyncClient
    core: DevCore

    async def configure(self, *configs: Mapping[str, Any]) -> dict[str, Any]:
        """Add ``configs`` to Core and push the snapshot; returns the runtime's answer."""
        for config in configs:
            await self.core.put_config(config)
        return await self.core.push(self.url)
