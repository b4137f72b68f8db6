"""The registry: what every running actor knows, read as immutable per-device slices.

Each slice is written only by its actor (through its supervisor: published state, the
events it emitted, its entities) and read by everyone else as a snapshot. A slice exists
exactly as long as its actor runs: stopping the actor removes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any

import attrs

from ._children import ChildView
from ._config import DeviceIdentity
from ._health import ActorHealth
from ._nursery import ActorNursery
from ._reading import Reading
from ._sink import EventRecord
from ._supervisor import Supervisor

__all__ = ["DeviceSlice", "Registry"]


@attrs.frozen(kw_only=True)
class DeviceSlice:
    """One running device, as of the moment it was read."""

    identity: DeviceIdentity
    actor: str
    latest_state: Mapping[str, Any]
    """Its latest value per key: readings and published state, the latest winning."""
    state_updated: datetime | None
    readings: tuple[Reading, ...]
    """The device's own most recent readings."""
    readings_at: datetime | None
    entities: tuple[Mapping[str, Any], ...]
    recent_events: tuple[EventRecord, ...]
    health: ActorHealth
    children: tuple[ChildView, ...] = ()
    """The devices its actor reports for (a gateway's children), by device id."""
    supervisor: Supervisor = attrs.field(repr=False)
    """For calls into the actor (commands, refreshes); reading it changes nothing."""


class Registry:
    """A read-only view over the actors of an ``ActorNursery``."""

    def __init__(self, actors: ActorNursery) -> None:
        self._actors = actors

    def __len__(self) -> int:
        return len(self._actors)

    def __iter__(self) -> Iterator[DeviceSlice]:
        return (_slice(s) for s in self._actors)

    def select(self, matches: Callable[[DeviceIdentity], bool]) -> list[DeviceSlice]:
        """The slices of the devices whose identity ``matches``; only those are built (a
        slice reads the actor's health and state, too much to do for every device)."""
        return [_slice(s) for s in self._actors if matches(s.identity)]

    def page(self, offset: int, limit: int | None) -> tuple[int, list[Supervisor]]:
        """How many devices run, and the supervisors of one page of them by config id;
        ``slice()`` each when needed (a slice is too much to build for every device)."""
        ordered = sorted(self._actors, key=lambda s: (s.identity.config_id, s.identity.id))
        end = None if limit is None else offset + limit
        return len(ordered), ordered[offset:end]

    @staticmethod
    def slice(supervisor: Supervisor) -> DeviceSlice:
        return _slice(supervisor)

    def with_child(self, device_id: str, config_id: str | None = None) -> list[DeviceSlice]:
        """The slices of the devices that have child ``device_id`` (of config ``config_id``,
        a local id or Core's, when given): the gateways a command or query for it means."""
        return [
            _slice(s)
            for s in self._actors
            if s.has_child(device_id)
            and (config_id is None or config_id in (s.identity.config_id, s.identity.id))
        ]

    def get(self, config_id: str) -> DeviceSlice | None:
        """The slice of the device whose local ``id`` or Core ``config_id`` is ``config_id``."""
        supervisor = self._actors.get(config_id)
        if supervisor is None:
            supervisor = next((s for s in self._actors if s.identity.config_id == config_id), None)
        return _slice(supervisor) if supervisor is not None else None


def _slice(supervisor: Supervisor) -> DeviceSlice:
    state, updated = supervisor.published_state()
    readings, readings_at = supervisor.latest_readings()
    return DeviceSlice(
        identity=supervisor.identity,
        actor=type(supervisor.actor).__name__,
        latest_state=state,
        state_updated=updated,
        readings=readings,
        readings_at=readings_at,
        entities=tuple(supervisor.actor.entities()),
        recent_events=supervisor.recent_events(),
        health=supervisor.health(),
        children=supervisor.children(),
        supervisor=supervisor,
    )
