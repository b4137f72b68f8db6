"""Watching the runtime: ``/health`` and ``/diagnostics``. Every moment is ISO-8601 UTC."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from .wire import Answer, JsonObject, UtcTime, WireModel, omitted_when_none

__all__ = [
    "DIAGNOSTICS_PAGE",
    "DIAGNOSTICS_PAGE_MAX",
    "ActorRecord",
    "AuthInfo",
    "ChildHealth",
    "ChildrenHealth",
    "CoreLink",
    "DeliveryStats",
    "DeviceDelivery",
    "Diagnostics",
    "DiagnosticsAnswer",
    "DiagnosticsFilters",
    "DiagnosticsQuery",
    "ErrorView",
    "HealthAnswer",
    "HealthConcern",
    "HealthFigures",
    "IntegrationInfo",
    "LinkError",
    "MemoryFigures",
    "Page",
    "Recovery",
    "Rehydration",
    "RehydrationSource",
    "RuntimeFigures",
    "SourceFigures",
    "SourceLinkError",
    "SourcesFigures",
    "StartingFigures",
    "StorageFigures",
]

#: Actor records in one ``/diagnostics`` answer unless ``limit`` asks for more.
DIAGNOSTICS_PAGE = 100
DIAGNOSTICS_PAGE_MAX = 1000

Status = Literal["ok", "degraded"]
AvailabilityReason = Literal["offline", "crashing", "failed", "needs_reconfiguration"]
LinkState = Literal["unknown", "up", "down", "auth_rejected", "no_identity", "misrouted"]


class IntegrationInfo(Answer):
    id: str
    name: str
    version: str


class HealthConcern(Answer):
    """One reason the status is ``degraded``."""

    code: str
    message: str
    hint: str


class LinkError(Answer):
    """The last delivery error: a stable code, what happened, what to do."""

    model_config = ConfigDict(extra="allow")

    code: str
    message: str
    hint: str
    at: UtcTime


class CoreLink(Answer):
    state: LinkState
    since: UtcTime
    last_error: LinkError | None
    next_probe: UtcTime | None = Field(
        default=None, description="After 401/403 or 404: when delivery next tries Core."
    )


class RehydrationSource(Answer):
    source: str
    status: str
    configs: int
    detail: str | None


class Rehydration(Answer):
    """Where the devices running at start-up came from."""

    ok: bool
    sources: list[RehydrationSource]


class MemoryFigures(Answer):
    """The process's resident memory, sampled every few seconds, and its trend."""

    rss_mb: float | None
    peak_rss_mb: float | None
    trend_mb_per_min: float | None
    trend_window_s: float
    limit_mb: float | None
    sampled_at: UtcTime | None


class Recovery(Answer):
    """A damaged, emptied or missing state file found at start-up, and what came back."""

    role: str
    path: str
    reason: Literal["corrupt", "emptied", "missing"]
    detail: str
    moved_to: str | None = Field(description="Where the damaged file is kept (never deleted).")
    recovered: dict[str, int] = Field(description="Rows copied into the fresh file, by table.")
    skipped: int
    expected: int | None
    lost: int | None
    at: UtcTime


class StorageFigures(Answer):
    spool: Recovery | None
    command_ledger: Recovery | None


class RuntimeFigures(Answer):
    uptime_s: float
    devices: int
    failed_devices: int
    generation: int | None
    core_link: CoreLink
    queue_depth: int
    spool_depth: int
    dropped: int
    concerns: list[HealthConcern]
    memory: MemoryFigures
    storage: StorageFigures


class HealthFigures(RuntimeFigures):
    rehydration: Rehydration | None


class StartingFigures(Answer):
    error: str


class HealthAnswer(Answer):
    """Conformance checkers read ``status`` or ``ok``: both are given."""

    status: Literal["ok", "degraded", "starting", "failed"]
    ok: bool
    integration: IntegrationInfo
    runtime: HealthFigures | StartingFigures
    metadata: JsonObject


class DeliveryStats(Answer):
    accepted: int
    delivered: int
    retried: int
    spooled: int
    replayed: int
    dropped: int
    rejected: int
    in_flight: int
    queue_depth: int
    spool_depth: int
    spool_bytes: int
    spool_oldest_age: float | None
    durability: Literal["memory", "write_ahead"]
    link: CoreLink
    rejected_kept: int = Field(description="Refused payloads kept in the rejected table.")
    rejected_bytes: int
    written_behind: int = Field(description="Items written to the spool after waiting.")
    spool_error: JsonObject | None = Field(description="Why the spool cannot be written now.")
    recovery: Recovery | None
    configs_tracked: int
    backlog_age: float | None = Field(
        default=None,
        description="Seconds since the oldest undelivered item was made (None: none waits).",
    )
    deferred: int = Field(
        default=0,
        description="Scheduled polls put off because the spool's writer was behind.",
    )


class AuthInfo(Answer):
    mode: Literal["managed", "adopted"]
    token_source: Literal["environment", "adopted", "none"]
    container_id: str | None
    token_known: bool


class ErrorView(Answer):
    type: str
    message: str
    code: str
    hint: str
    phase: str
    at: UtcTime


class DeviceDelivery(Answer):
    accepted: int
    delivered: int
    last_delivered: UtcTime | None


class ChildHealth(Answer):
    """One child of a gateway: when it was last heard of, and whether it is available."""

    device_id: str
    available: bool
    last_seen: UtcTime
    last_seen_age_s: float = Field(description="Seconds since last_seen.")
    observed_at: UtcTime | None = Field(
        description="The vendor's timestamp of its latest report, when it gave one."
    )


class ChildrenHealth(Answer):
    """A gateway's children (the devices its actor reports for), by device id."""

    total: int
    unavailable: int
    stale_after_s: float = Field(description="Unheard this long, a child is unavailable.")
    max_children: int = Field(description="The most kept; reports naming more are not kept.")
    devices: list[ChildHealth]


class ActorRecord(Answer):
    """One actor's health; durations in seconds."""

    config_id: str
    device_id: str
    actor: str
    state: str
    state_since: UtcTime
    available: bool
    availability_reason: AvailabilityReason | None = Field(
        description="Why the device is unavailable: offline, crashing, failed, "
        "needs_reconfiguration (null while available)."
    )
    restarts_total: int
    restarts_in_window: int
    consecutive_failures: int
    last_error: ErrorView | None
    last_poll_started: UtcTime | None
    last_poll_ended: UtcTime | None
    next_poll_due: UtcTime | None
    poll_duration_last: float | None
    poll_duration_p50: float | None
    poll_duration_p95: float | None
    polls: int
    overruns: int
    readings: int
    blocking_calls: int = Field(description="Times the actor blocked the event loop.")
    longest_stall: float | None = Field(description="Its longest block, in seconds.")
    latest_readings_at: UtcTime | None
    delivery: DeviceDelivery
    children: ChildrenHealth | None = omitted_when_none(
        description="Only for an actor that reports children (a gateway)."
    )


class SourceLinkError(Answer):
    """Why a shared source's last session failed or ended."""

    code: str
    message: str
    hint: str
    at: UtcTime


class SourceFigures(Answer):
    """One shared source (``Integration(sources=...)``): its connection and its counts."""

    name: str
    kind: str = Field(description="mqtt")
    where: str = Field(description="Where it connects (never with credentials).")
    state: Literal["connecting", "connected", "down"]
    since: UtcTime
    down_since: UtcTime | None = Field(description="Set from the first failure until it connects.")
    last_error: SourceLinkError | None
    next_attempt: UtcTime | None = Field(description="While down: when it reconnects.")
    connects: int
    packets: int = Field(description="Payloads received.")
    routed: int = Field(description="Payloads handed to the actors that claim their device.")
    unclaimed: int = Field(description="Payloads of devices no config claims (see /discover).")
    malformed: int = Field(description="Payloads that are not an envelope with a device_hint.")


class SourcesFigures(Answer):
    sources: list[SourceFigures]
    claimed_hints: int = Field(description="Devices (model and id) that actors claim.")
    unclaimed_hints: int = Field(description="Devices heard, claimed by none (see /discover).")
    unclaimed_evicted: int = Field(description="Unclaimed devices forgotten, least recent first.")
    dropped: int = Field(description="Packets dropped from full actor inboxes (oldest first).")


class Page(Answer):
    matched: int
    offset: int
    limit: int
    next_offset: int | None


class DiagnosticsFilters(Answer):
    state: str | None
    device_id: str | None


class Diagnostics(Answer):
    runtime: RuntimeFigures
    delivery: DeliveryStats
    auth: AuthInfo
    rehydration: Rehydration | None
    actors_by_state: dict[str, int]
    actors: list[ActorRecord]
    actors_page: Page
    filters: DiagnosticsFilters
    sources: SourcesFigures | None = omitted_when_none(
        description="Only for an integration that declares shared sources."
    )


class DiagnosticsAnswer(Answer):
    status: Status
    integration: IntegrationInfo
    diagnostics: Diagnostics


class DiagnosticsQuery(WireModel):
    """Filters and the page of actor records (ordered by config id)."""

    state: str | None = Field(default=None, description="Only actors in this state.")
    device_id: str | None = Field(default=None, description="Only this device (or local id).")
    offset: int = Field(default=0, ge=0, description="Skip this many matching actors.")
    limit: int = Field(
        default=DIAGNOSTICS_PAGE,
        ge=1,
        le=DIAGNOSTICS_PAGE_MAX,
        description="At most this many actor records.",
    )
