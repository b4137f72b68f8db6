"""The live status page's data: ``/status/data`` (a summary and one page of compact rows)
and ``/status/device/<config_id>`` (one device in detail). The page itself (``/status``)
is static HTML that reads these. Every moment is ISO-8601 UTC, every duration seconds.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .core import MetricValue, Severity
from .health import (
    DeliveryStats,
    DeviceDelivery,
    ErrorView,
    IntegrationInfo,
    Page,
    Rehydration,
    RuntimeFigures,
)
from .wire import Answer, JsonObject, UtcTime, WireModel

__all__ = [
    "STATUS_PAGE",
    "STATUS_PAGE_MAX",
    "STATUS_REFRESH_SECONDS",
    "ActorStateName",
    "DeviceStatusAnswer",
    "HealthTransition",
    "StatusAnswer",
    "StatusChild",
    "StatusEvent",
    "StatusFigures",
    "StatusFilters",
    "StatusQuery",
    "StatusReading",
    "StatusRow",
    "StatusSummary",
]

#: Rows in one ``/status/data`` answer unless ``limit`` asks for another number.
STATUS_PAGE = 100
#: The most rows one answer carries: the page shows a page, never the whole fleet.
STATUS_PAGE_MAX = 500
#: How often the page asks for fresh data. Measured in docs/benchmarks.md
#: (bench/status.py): a device going offline shows within this plus one request.
STATUS_REFRESH_SECONDS = 1.0
#: The longest search string taken.
SEARCH_MAX = 200

ActorStateName = Literal[
    "starting", "running", "unavailable", "backoff", "failed", "stopping", "stopped"
]


class StatusQuery(WireModel):
    """One page of rows, ordered by config id, after the filters."""

    offset: int = Field(default=0, ge=0, description="Skip this many matching devices.")
    limit: int = Field(
        default=STATUS_PAGE, ge=1, le=STATUS_PAGE_MAX, description="At most this many rows."
    )
    state: ActorStateName | None = Field(default=None, description="Only devices in this state.")
    q: str | None = Field(
        default=None,
        max_length=SEARCH_MAX,
        description="Only devices whose config id, device id or local id contains this "
        "(case-insensitive).",
    )


class StatusRow(Answer):
    """One device, compact: what a row of the page shows."""

    config_id: str
    device_id: str
    actor: str
    state: ActorStateName
    since: UtcTime = Field(description="When the device entered this state.")
    available: bool
    reason: str | None = Field(
        description="Why the device is not available (offline, crashing, failed, "
        "needs_reconfiguration), when the runtime says; null while available."
    )
    restarts: int
    error: ErrorView | None = Field(description="The last error, with its hint.")
    poll_s: float | None = Field(description="The last poll's duration.")
    poll_p95_s: float | None
    late_s: float | None = Field(
        description="How late the poll in progress started, or how overdue the next one "
        "is (0 when on time); null for push actors and devices not polling."
    )
    overruns: int = Field(description="Polls skipped because the device was still busy.")
    last_data: UtcTime | None = Field(description="When the device last produced readings.")


class StatusFigures(Answer):
    """What a row leaves out: the rest of the actor's health record."""

    restarts_in_window: int
    consecutive_failures: int
    polls: int
    readings: int
    poll_p50_s: float | None
    last_poll_started: UtcTime | None
    last_poll_ended: UtcTime | None
    next_poll_due: UtcTime | None


class StatusSummary(Answer):
    """The top of the page: the Core link, delivery and spool, rehydration, the fleet."""

    status: Literal["ok", "degraded"]
    integration: IntegrationInfo
    mode: Literal["managed", "adopted"]
    runtime: RuntimeFigures
    delivery: DeliveryStats
    rehydration: Rehydration | None
    by_state: dict[str, int] = Field(description="Every device counted by state.")


class StatusFilters(Answer):
    state: ActorStateName | None
    q: str | None


class StatusAnswer(Answer):
    summary: StatusSummary
    rows: list[StatusRow]
    page: Page
    filters: StatusFilters
    refresh_s: float = Field(description="How often the page asks again.")
    generated_at: UtcTime


class StatusReading(Answer):
    metric: str
    value: MetricValue
    unit: str | None


class StatusEvent(Answer):
    event_type: str
    severity: Severity
    at: UtcTime
    data: JsonObject


class HealthTransition(Answer):
    """A change of state the web layer saw (it looks once a second, so a spell shorter
    than that may be missing here; the events and the restart count still show it)."""

    at: UtcTime = Field(description="When the device entered the state.")
    state: ActorStateName
    available: bool
    reason: str | None
    restarts: int
    error: str | None = Field(description="The last error's code, while not running.")


class StatusChild(Answer):
    """A device a gateway reports for: a child of its config."""

    device_id: str
    available: bool
    last_data: UtcTime | None


class DeviceStatusAnswer(Answer):
    row: StatusRow
    figures: StatusFigures
    delivery: DeviceDelivery
    config: JsonObject = Field(description="The device's config, secrets masked.")
    latest_state: JsonObject = Field(description="Latest value per key, secrets masked.")
    state_updated: UtcTime | None
    readings: list[StatusReading]
    events: list[StatusEvent] = Field(description="The device's recent events, newest first.")
    history: list[HealthTransition] = Field(description="Recent changes of state, newest first.")
    children: list[StatusChild]
