"""Helpers for testing actors and integrations built on this runtime."""

from __future__ import annotations

from collections import deque

from ._sink import EventRecord, TelemetryRecord

__all__ = ["RecordingSink"]


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
