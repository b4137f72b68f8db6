"""What the devices know: ``/state`` (with refresh receipts), ``/events``, ``/entities``."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from .core import Severity
from .wire import Answer, JsonObject, UtcTime, WireModel, omitted_when_none

#: The most devices one paged ``/entities`` answer covers.
ENTITIES_PAGE_MAX = 5000

__all__ = [
    "ENTITIES_PAGE_MAX",
    "CapabilityInfo",
    "CommandInfo",
    "CommandOption",
    "Dashboard",
    "EntitiesAnswer",
    "EntitiesPage",
    "EntitiesQuery",
    "Entity",
    "EventView",
    "EventsAnswer",
    "RefreshOutcome",
    "RefreshReceipt",
    "StateAnswer",
    "StateEntry",
    "StateQuery",
]


class StateQuery(WireModel):
    refresh: bool = Field(default=False, description="Read every device upstream first.")
    refresh_request_id: str | None = Field(
        default=None, min_length=1, description="Required with refresh=true; echoed back."
    )
    config_id: str | None = Field(default=None, description="Only this device.")


class StateEntry(Answer):
    """One device's latest state. A gateway's child has an entry of its own, keyed
    ``<config_id>:<device_id>`` with its gateway's ``config_id``; only a child's entry
    has ``parent_device_id``, ``last_seen``, ``observed_at`` and ``available``."""

    config_id: str
    device_id: str
    latest_state: JsonObject = Field(description="Latest value per key, whichever path it came.")
    last_updated: UtcTime | None
    parent_device_id: str | None = omitted_when_none(
        description="A child's: the device id of the gateway that reports it."
    )
    last_seen: UtcTime | None = omitted_when_none(
        description="A child's: when the runtime last heard of it."
    )
    observed_at: UtcTime | None = omitted_when_none(
        description="A child's: the vendor's timestamp of its latest report, when it gave one."
    )
    available: bool | None = omitted_when_none(
        description="A child's: false once it went unheard for its staleness window."
    )


class RefreshOutcome(Answer):
    """One device's part of a refresh. Push actors are ``not_applicable``: they report
    as data arrives and cannot be read on demand."""

    config_id: str
    status: Literal["refreshed", "not_applicable", "unsupported", "failed"]
    message: str | None
    observed_at: UtcTime | None


class RefreshReceipt(Answer):
    """``performed`` is true exactly when at least one real upstream read happened; then
    ``status`` is ``refreshed``, and ``devices`` lists any that failed."""

    request_id: str
    performed: bool
    status: Literal["refreshed", "unsupported", "failed"]
    observed_at: UtcTime | None
    source: str
    message: str | None
    error: str | None
    devices: list[RefreshOutcome]


class StateAnswer(Answer):
    entries: dict[str, StateEntry]
    refresh: RefreshReceipt | None = omitted_when_none(description="Only with refresh=true.")


class EventView(Answer):
    event_type: str
    source: str
    payload: JsonObject
    device_id: str
    container_id: str | None
    integration_id: str | None
    config_id: str
    severity: Severity
    event_id: str
    ts: UtcTime
    topic: str | None
    received_at: UtcTime


class EventsAnswer(Answer):
    events: list[EventView] = Field(description="The most recent local events, oldest first.")


class Dashboard(Answer):
    model_config = ConfigDict(extra="allow")

    allowed_widgets: list[str] = Field(default_factory=lambda: ["status"])
    default_widget: str = "status"
    recommended_widgets: list[str] = Field(default_factory=lambda: ["status"])


class CommandOption(Answer):
    model_config = ConfigDict(extra="allow")

    id: str
    label: str
    kind: str = "action"
    args_schema: JsonObject = Field(default_factory=lambda: {"type": "object"})


class Entity(Answer):
    """One entity. An actor's ``entities()`` may give any subset of the fields (and more
    of its own): what it leaves out gets the defaults below or the device's values."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    capabilities: list[str] = Field(default_factory=list)
    config_id: str | None = None
    device_id: str | None = None
    device_type: str | None = None
    device_class: str | None = None
    entity_type: str | None = "device"
    available_commands: list[str | CommandOption] = Field(default_factory=list)
    dashboard: Dashboard = Field(default_factory=Dashboard)
    metadata: JsonObject = Field(default_factory=dict)
    parent_device_id: str | None = omitted_when_none(
        description="A gateway's child's entity: the device id of its gateway."
    )


class CapabilityInfo(Answer):
    model_config = ConfigDict(extra="allow")

    kind: Literal["sensor", "actuator", "action"]
    unit: str | None = omitted_when_none()


class CommandInfo(Answer):
    description: str
    timeout_ms: int


class EntitiesQuery(WireModel):
    """Every device's entities by default; ``limit`` pages them, by config id."""

    offset: int = Field(default=0, ge=0, description="Skip this many devices.")
    limit: int | None = Field(
        default=None, ge=1, le=ENTITIES_PAGE_MAX, description="At most this many devices."
    )


class EntitiesPage(Answer):
    devices: int
    offset: int
    limit: int | None
    next_offset: int | None


class EntitiesAnswer(Answer):
    entities: list[Entity]
    capabilities: dict[str, CapabilityInfo]
    commands: dict[str, CommandInfo]
    page: EntitiesPage
