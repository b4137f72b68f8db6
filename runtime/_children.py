"""A gateway's children: the devices an actor reports for (``report(..., device_id=)``).

For Core and the operator a child is a device of its own: latest state by key, when it
was last heard from, the vendor's timestamp, and whether it is available. It belongs to
the config of the actor that reports it, and lives in that actor's supervisor: made at
the first report naming it, gone with the supervisor, or earlier when the actor says so
(``forget_child``). An actor that reports only its own device holds no ``Children`` at
all (the supervisor keeps None), so the poll path of an ordinary device pays nothing.

Staleness is one entry on the shared scheduler per actor, not a timer per child: it sits
at the earliest deadline among the available children (``last_seen + stale_after``),
and the sweep it rings marks the overdue ones unavailable and re-arms at the next one.
A report never moves the entry: its new deadline is later than any deadline already
armed. Children come from what the actor hears, which an outsider can steer (a
neighbour's 433 MHz sensor, a spoofed MQTT topic), so they are capped per actor
(``DeviceActor.max_children``) and so are the keys each child keeps.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import attrs
import trio

from ._reading import Reading
from ._scheduler import Scheduler

__all__ = ["MAX_CHILD_KEYS", "Child", "ChildView", "Children"]

#: State keys one child keeps; readings of further metrics are delivered to Core but not
#: kept in its ``/state`` entry (a child's metrics come from vendor data).
MAX_CHILD_KEYS = 256


class Child:
    """One child as its supervisor keeps it (mutable; readers get a ``ChildView``).
    Times are trio time, except ``observed_at`` (the vendor's, Unix time)."""

    __slots__ = ("available", "device_id", "last_seen", "observed_at", "units", "values")

    def __init__(self, device_id: str, now: float) -> None:
        self.device_id = device_id
        self.values: dict[str, Any] = {}
        self.units: dict[str, str] = {}
        self.last_seen = now
        self.observed_at: float | None = None
        self.available = True


@attrs.frozen(kw_only=True)
class ChildView:
    """One child of a gateway, as of the moment it was read. Times are aware UTC."""

    device_id: str
    latest_state: Mapping[str, Any]
    """Its latest value per metric."""
    units: Mapping[str, str]
    """The unit of each metric that has one."""
    last_seen: datetime
    """When the runtime last heard of it (a report naming it)."""
    last_seen_age: float
    """Seconds since ``last_seen``."""
    observed_at: datetime | None
    """The vendor's timestamp of its latest report, when the actor gave one."""
    available: bool
    """False once it was not heard of for ``stale_after`` seconds, until it is again."""


#: What the children tell their supervisor: (event type, the child, event data).
ChildEvent = Callable[[str, Child, dict[str, Any]], None]


class Children:
    """The children of one actor, with their staleness timer (a ``Ringable``)."""

    __slots__ = (
        "_armed",
        "_by_id",
        "_closed",
        "_grace_until",
        "_log",
        "_scheduler",
        "_stale_after",
        "_tell",
        "_warned",
        "cap",
    )

    def __init__(
        self,
        scheduler: Scheduler,
        *,
        stale_after: float,
        cap: int,
        tell: ChildEvent,
        log: logging.LoggerAdapter[logging.Logger],
    ) -> None:
        self._scheduler = scheduler
        self._by_id: dict[str, Child] = {}
        self._armed = math.inf  # the earliest time a sweep is scheduled for
        self._stale_after = stale_after
        self._tell: ChildEvent | None = tell
        self._log = log
        self._warned = False
        self._closed = False
        # No child is called stale before this: inf while the actor's polls are put off
        # (hold), then one window after they resume (release).
        self._grace_until = -math.inf
        self.cap = cap
        """The most children kept; reports naming others are delivered, not kept."""

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._by_id

    @property
    def stale_after(self) -> float:
        """Seconds without a report after which a child is unavailable."""
        return self._stale_after

    def retime(self, stale_after: float) -> None:
        """A new window (the actor's poll interval changed): sweep now, against it."""
        self._stale_after = stale_after
        self._arm(trio.current_time())

    def seen(
        self, device_id: str, batch: tuple[Reading, ...], observed_at: float | None, now: float
    ) -> bool:
        """A report named ``device_id``: it is alive, with these values. False when it is
        a new child past the cap (not kept; the caller still delivers its readings)."""
        child = self._by_id.get(device_id)
        if child is None:
            if len(self._by_id) >= self.cap:
                self._over_cap(device_id)
                return False
            child = self._by_id[device_id] = Child(device_id, now)
        values = child.values
        for reading in batch:
            metric = reading.metric
            if metric in values or len(values) < MAX_CHILD_KEYS:
                values[metric] = reading.value
                if reading.unit is not None:
                    child.units[metric] = reading.unit
        child.last_seen = now
        if observed_at is not None:
            child.observed_at = observed_at
        if not child.available:
            child.available = True
            self._say("device.available", child, {})
        if self._armed == math.inf:
            # Nothing armed: no other child is available. Otherwise the armed sweep is
            # due no later than this child's new deadline, and will re-arm for it.
            self._arm(now + self._stale_after)
        return True

    def forget(self, device_id: str) -> bool:
        """Drop a child quietly (no event); whether it was known. The armed sweep, if it
        was for this child, finds nothing to do and re-arms for the next."""
        return self._by_id.pop(device_id, None) is not None

    def adopt(self, children: Iterable[Child]) -> None:
        """Take over the children a predecessor for the same config kept (a restart for a
        changed config), availability and all, so Core's view of them carries on."""
        for child in children:
            if child.device_id not in self._by_id and len(self._by_id) < self.cap:
                self._by_id[child.device_id] = child
        self._arm(trio.current_time())

    def hold(self) -> None:
        """The actor's polls are put off (``Sink.admit``): not hearing from a child says
        nothing about it meanwhile."""
        self._grace_until = math.inf

    def release(self, now: float) -> None:
        """Polls resume: each child gets one window to be heard again."""
        if self._grace_until == math.inf:
            self._grace_until = now + self._stale_after
            self._arm(self._grace_until)

    def records(self) -> tuple[Child, ...]:
        return tuple(self._by_id.values())

    def views(self, device_id: str | None = None) -> tuple[ChildView, ...]:
        """Snapshots of every child (by device id), or of ``device_id`` alone."""
        now = trio.current_time()
        epoch = datetime.now(UTC).timestamp() - now  # one offset for every time here
        if device_id is not None:
            one = self._by_id.get(device_id)
            chosen: Iterable[Child] = () if one is None else (one,)
        else:
            chosen = sorted(self._by_id.values(), key=lambda c: c.device_id)
        return tuple(
            ChildView(
                device_id=child.device_id,
                latest_state=MappingProxyType(dict(child.values)),
                units=MappingProxyType(dict(child.units)),
                last_seen=datetime.fromtimestamp(epoch + child.last_seen, UTC),
                last_seen_age=max(0.0, now - child.last_seen),
                observed_at=None
                if child.observed_at is None
                else datetime.fromtimestamp(child.observed_at, UTC),
                available=child.available,
            )
            for child in chosen
        )

    def unavailable(self) -> int:
        return sum(1 for child in self._by_id.values() if not child.available)

    def close(self) -> None:
        """The supervisor stopped: later rings do nothing (entries cannot be cancelled).
        The records stay readable, for a successor to adopt."""
        self._closed = True
        self._tell = None

    def ring(self) -> None:
        """The staleness sweep, run by the scheduler's task: it must never raise there,
        where an error would stop every actor's timer."""
        now = trio.current_time()
        if self._closed or now < self._armed:
            return  # superseded by an earlier entry that re-armed for later
        self._armed = math.inf
        try:
            self._sweep(now)
        except Exception:
            self._log.exception("the children's staleness sweep failed; re-arming")
            self._arm(now + self._stale_after)

    def _sweep(self, now: float) -> None:
        window = self._stale_after
        earliest = math.inf
        for child in self._by_id.values():
            if not child.available:
                continue
            deadline = max(child.last_seen + window, self._grace_until)
            if deadline <= now:
                child.available = False
                self._say("device.unavailable", child, {"stale_after_s": window})
            elif deadline < earliest:
                earliest = deadline
        if earliest != math.inf:
            self._arm(earliest)

    def _arm(self, when: float) -> None:
        if when < self._armed and not self._closed:
            self._armed = when
            self._scheduler.ring_at(when, self)

    def _say(self, event_type: str, child: Child, data: dict[str, Any]) -> None:
        tell = self._tell
        if tell is not None:
            tell(event_type, child, data)

    def _over_cap(self, device_id: str) -> None:
        if not self._warned:
            self._warned = True
            self._log.warning(
                "reports name more than %d children (max_children); %r and any further new "
                "ones are delivered to Core but not kept as children (no /state entry, no "
                "staleness); forget_child() the ones that are gone",
                self.cap,
                device_id[:64],
            )
