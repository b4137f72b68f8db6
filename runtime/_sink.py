"""What actors emit, where their output methods hand it, and what finally takes it.

``ActorOutputs`` is the actor-facing side: ``DeviceActor.publish_state``, ``report`` and
``emit_event`` call it (the supervisor implements it), so the actor module needs nothing
from the supervisor's. ``Sink`` is the far side (the outbox, a test recorder). Records
are immutable and stamped with the emitting actor's identities when they are made, so
nothing downstream has to look an actor up to deliver its data.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any, Protocol

import attrs

from ._config import DeviceIdentity
from ._contract import SEVERITIES, Severity
from ._errors import InvalidEvent
from ._limits import ENVELOPE_ALLOWANCE, MAX_PAYLOAD_BYTES, encoded_size
from ._reading import Reading

__all__ = ["SEVERITIES", "ActorOutputs", "EventRecord", "Severity", "Sink", "TelemetryRecord"]


@attrs.frozen(slots=True)
class TelemetryRecord:
    """One telemetry payload: the readings of one poll or one ``report()`` call."""

    identity: DeviceIdentity
    """The emitting actor's identities (config, container, integration)."""
    device_id: str
    """The device the readings are about: the actor's own, or a gateway's child."""
    readings: tuple[Reading, ...]
    observed_at: float
    """Unix time of the observation: the vendor's when given, else when it was read."""


@attrs.frozen(slots=True)
class EventRecord:
    """One event for Core; ``event_id`` is fixed here and kept across every retry."""

    identity: DeviceIdentity
    device_id: str
    event_type: str
    severity: Severity
    data: Mapping[str, Any]
    source: str
    created_at: float = attrs.field(factory=time.time)
    event_id: str = attrs.field(factory=lambda: uuid.uuid4().hex)

    def __attrs_post_init__(self) -> None:
        """An event must fit in one payload (``MAX_PAYLOAD_BYTES``) as JSON: refused here,
        where the actor's ``emit_event()`` made it, rather than in delivery."""
        try:
            size = encoded_size(self.data) + len(self.event_type)
        except ValueError as exc:  # NaN or infinity: Core's JSON has neither
            raise InvalidEvent(
                f"event {self.event_type!r} has data that is not JSON: {exc}"
            ) from None
        room = MAX_PAYLOAD_BYTES - ENVELOPE_ALLOWANCE
        if size > room:
            raise InvalidEvent(
                f"event {self.event_type!r} is {size} bytes encoded; one event may carry at "
                f"most {room} (runtime.MAX_PAYLOAD_BYTES = {MAX_PAYLOAD_BYTES}, less room "
                "for its ids)",
                hint="Send a summary or a reference (a URL, an id) instead of the whole data.",
                details={"size": size, "limit": room},
            )


class Sink(Protocol):
    """Takes what actors emit. Every method must return at once and never block: they
    are called from inside actors' poll loops."""

    def telemetry(self, record: TelemetryRecord) -> None: ...

    def event(self, record: EventRecord) -> None: ...

    def admit(self) -> bool:
        """Whether a scheduled poll may run now; False puts it off for a moment (the
        sink cannot take readings in as fast as they come). A sink without it (written
        before it existed) admits every poll."""
        ...


class ActorOutputs(Protocol):
    """Takes what one actor's output methods produce, already validated by them. Like
    the sink's, these never block: actors call them from inside their hooks."""

    def on_state(self, state: Mapping[str, Any]) -> None: ...

    def on_report(
        self, batch: tuple[Reading, ...], device_id: str | None, observed_at: float | None
    ) -> None: ...

    def on_event(
        self, event_type: str, data: dict[str, Any], severity: Severity, device_id: str | None
    ) -> str:
        """Returns the event's ``event_id``."""
        ...

    def on_forget_child(self, device_id: str) -> bool:
        """Drop a child quietly; returns whether it was known."""
        ...
