"""What the devices know: ``/state`` (with refresh receipts), ``/events``, ``/entities``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Literal

import trio
from pydantic import ValidationError
from quart import Blueprint
from quart_schema import validate_querystring, validate_response

from .._children import ChildView
from .._contract import (
    CapabilityInfo,
    CommandInfo,
    CommandOption,
    Dashboard,
    EntitiesAnswer,
    EntitiesPage,
    EntitiesQuery,
    Entity,
    EventsAnswer,
    EventView,
    RefreshOutcome,
    RefreshReceipt,
    StateAnswer,
    StateEntry,
    StateQuery,
    build,
    from_unix,
)
from .._errors import ActorCallError, RefreshUnsupported
from .._lifecycle import ActorState
from .._logs import runtime_logger
from .._redact import redact, redact_text
from .._registry import DeviceSlice, Registry
from .._sink import EventRecord
from .context import current_runtime
from .problem import Problem

__all__ = ["REFRESH_TIMEOUT", "blueprint", "device_entities"]

log = runtime_logger("runtime.web")

blueprint = Blueprint("devices", __name__)

#: How long ``/state?refresh=true`` waits for the devices' reads.
REFRESH_TIMEOUT = 30.0
#: Events ``/events`` answers (the most recent ones, oldest first).
EVENTS_SHOWN = 200
#: Devices handled between two yields to the scheduler while one answer is built.
_YIELD_EVERY = 256

_WIDGETS_BY_TYPE = {
    bool: ("toggle", ["toggle", "status"]),
    int: ("gauge", ["gauge", "value", "chart"]),
    float: ("gauge", ["gauge", "value", "chart"]),
    str: ("value", ["value", "status"]),
}


@blueprint.get("/state")
@validate_querystring(StateQuery)
@validate_response(StateAnswer)
async def state(query_args: StateQuery) -> StateAnswer:
    """Latest state per device; with ``refresh=true`` every device is read upstream first
    and the answer carries a receipt for ``refresh_request_id``."""
    rt = current_runtime()
    wanted = query_args.config_id
    if query_args.refresh and not query_args.refresh_request_id:
        raise Problem(
            400,
            "refresh=true needs a refresh_request_id.",
            code="refresh_request_id_required",
            hint="Add refresh_request_id=<id> to correlate the receipt.",
        )
    devices = rt.registry.select(lambda i: not wanted or wanted in (i.id, i.config_id, i.device_id))
    child = None
    if wanted and not devices:
        # A gateway's child: its device id, or its key <config_id>:<device_id>.
        devices, child = _gateways_of(rt.registry, wanted)
    if wanted and not devices:
        raise Problem(404, f"No configured device {wanted!r}.", code="unknown_device")
    receipt = None
    if query_args.refresh:
        assert query_args.refresh_request_id is not None
        receipt = await _refresh(devices, query_args.refresh_request_id)
        devices = [rt.registry.get(d.identity.id) or d for d in devices]
    entries: dict[str, StateEntry] = {}
    for device in devices:
        if child is None:
            entries[device.identity.config_id] = _state_entry(device)
        for view in device.children:
            if child is None or view.device_id == child:
                entries[f"{device.identity.config_id}:{view.device_id}"] = _child_entry(
                    device, view
                )
    return build(StateAnswer, entries=entries, refresh=receipt)


def _gateways_of(registry: Registry, wanted: str) -> tuple[list[DeviceSlice], str | None]:
    """The devices with child ``wanted`` (a device id, or ``<config_id>:<device_id>``)."""
    found = registry.with_child(wanted)
    if found:
        return found, wanted
    config_id, _, device_id = wanted.partition(":")
    if device_id:
        return registry.with_child(device_id, config_id), device_id
    return [], None


@blueprint.get("/events")
@validate_response(EventsAnswer)
async def events() -> EventsAnswer:
    """The runtime's recent local events (config changes, availability, the actors' own)."""
    rt = current_runtime()
    records = list(rt.sync.recent_events)
    for device in rt.registry:
        records.extend(device.recent_events)
    records.sort(key=lambda r: r.created_at)
    container_id = rt.client.container_id
    return build(
        EventsAnswer, events=[_event_view(r, container_id) for r in records[-EVENTS_SHOWN:]]
    )


@blueprint.get("/entities")
@validate_querystring(EntitiesQuery)
@validate_response(EntitiesAnswer)
async def entities(query_args: EntitiesQuery) -> EntitiesAnswer:
    """Every device's entities (declared by its actor, else one default entity), and the
    capabilities and commands they offer; ``limit`` pages them by config id."""
    rt = current_runtime()
    offset, limit = query_args.offset, query_args.limit
    total, page = rt.registry.page(offset, limit)
    out: list[Entity] = []
    capabilities: dict[str, CapabilityInfo] = {}
    commands: dict[str, CommandInfo] = {}
    built = 0
    for supervisor in page:
        if built >= _YIELD_EVERY:
            built = 0
            await trio.lowlevel.checkpoint()  # thousands of devices must not stall /health
        if supervisor.state is ActorState.STOPPED:
            continue  # removed while this answer was being built
        device = rt.registry.slice(supervisor)
        out += device_entities(device)
        _offered(device, capabilities, commands)
        built += 1 + len(device.children)
    following = offset + len(page)
    return build(
        EntitiesAnswer,
        entities=out,
        capabilities=capabilities,
        commands=commands,
        page=build(
            EntitiesPage,
            devices=total,
            offset=offset,
            limit=limit,
            next_offset=following if following < total else None,
        ),
    )


def _offered(
    device: DeviceSlice, capabilities: dict[str, CapabilityInfo], commands: dict[str, CommandInfo]
) -> None:
    """Add what ``device`` offers to the answer's capabilities and commands."""
    cls = type(device.supervisor.actor)
    for name, capability in cls.capabilities.items():
        if name not in capabilities:
            capabilities[name] = CapabilityInfo(kind=capability.kind, unit=capability.unit)
    for reading in device.readings:
        if reading.metric not in capabilities:
            capabilities[reading.metric] = build(CapabilityInfo, kind="sensor", unit=reading.unit)
    for child in device.children:
        for metric in child.latest_state:
            if metric not in capabilities:
                unit = child.units.get(metric)
                capabilities[metric] = build(CapabilityInfo, kind="sensor", unit=unit)
    for spec in cls.commands.values():
        if spec.name not in commands:
            timeout = spec.timeout if spec.timeout is not None else cls.command_timeout
            commands[spec.name] = build(
                CommandInfo, description=_describe(spec), timeout_ms=int(timeout * 1000)
            )
        if spec.name not in capabilities:
            capabilities[spec.name] = build(CapabilityInfo, kind="action", unit=None)


def device_entities(device: DeviceSlice) -> list[Entity]:
    """A device's entities as Core sees them, and its children's.

    Those its actor declares are completed from the device (ids, type) and the defaults;
    one naming a child's ``device_id`` is that child's. The device, and each child, with
    no declared entity gets one default entity. A declared entity that cannot be read as
    one is logged, and the defaults stand in for all of them.
    """
    identity = device.identity
    filled = {
        "config_id": identity.config_id,
        "device_id": identity.device_id,
        "device_type": _device_type(device),
    }
    children = {child.device_id for child in device.children}
    own: list[Entity] = []
    others: list[Entity] = []
    by_child: dict[str, list[Entity]] = {}
    declared = [dict(raw) for raw in device.entities]
    for raw in declared:
        _fill_id(raw, identity.config_id, identity.device_id, several=len(declared) > 1)
        try:
            entity = Entity.model_validate({**filled, **redact(raw)})
        except (ValidationError, TypeError, ValueError) as exc:
            log.warning("%s: an entity from entities() is malformed: %s", identity.id, exc)
            own, others, by_child = [], [], {}
            break
        if entity.device_id == identity.device_id:
            own.append(entity)
        elif entity.device_id in children:
            entity.parent_device_id = identity.device_id
            by_child.setdefault(entity.device_id, []).append(entity)
        else:
            others.append(entity)  # a device that has not reported (yet): as declared
    out = (own or [_default_entity(device)]) + others
    for child in device.children:
        out += by_child.get(child.device_id) or [_child_entity(device, child)]
    return out


def _fill_id(raw: dict[str, Any], config_id: str, own_device: str, *, several: bool) -> None:
    """A declared entity without an ``id`` gets ``<config_id>:<device_id>``, and ``:<key>``
    (``entity()``'s, else its name's) when the device declares several."""
    key = raw.pop("key", None)
    if raw.get("id"):
        return
    device_id = raw.get("device_id") or own_device
    suffix = f":{key or raw.get('name', 'entity')}" if several else ""
    raw["id"] = f"{config_id}:{device_id}{suffix}"


def _default_entity(device: DeviceSlice) -> Entity:
    """One entity per device: the metrics it reports, its commands as capabilities."""
    identity = device.identity
    actor = device.supervisor.actor
    metrics = {r.metric: r for r in device.readings}
    name = getattr(actor.config, "name", None) or identity.device_id
    return _entity(
        device,
        device_id=identity.device_id,
        name=str(name),
        values={m: r.value for m, r in metrics.items()},
        units={m: r.unit for m, r in metrics.items() if r.unit},
        metadata={"available": device.health.available},
    )


def _child_entity(device: DeviceSlice, child: ChildView) -> Entity:
    """A child's default entity: the metrics it reported, and the actor's commands,
    which reach it (the handler learns the target from its ``CommandContext``)."""
    return _entity(
        device,
        device_id=child.device_id,
        name=child.device_id,
        values=child.latest_state,
        units=child.units,
        metadata={"available": child.available, "last_seen": child.last_seen.isoformat()},
        parent_device_id=device.identity.device_id,
    )


def _entity(
    device: DeviceSlice,
    *,
    device_id: str,
    name: str,
    values: Mapping[str, Any],
    units: Mapping[str, str],
    metadata: dict[str, Any],
    parent_device_id: str | None = None,
) -> Entity:
    actor = device.supervisor.actor
    config_id = device.identity.config_id
    commands = list(type(actor).commands.values())
    widgets: list[str] = []
    for value in values.values():
        for widget in _WIDGETS_BY_TYPE.get(type(value), ("value", ["value"]))[1]:
            if widget not in widgets:
                widgets.append(widget)
    first = next(iter(values.values()), None)
    default_widget = _WIDGETS_BY_TYPE.get(type(first), ("value", []))[0] if values else "status"
    return build(
        Entity,
        id=f"{config_id}:{device_id}",
        name=redact_text(name),
        capabilities=list(
            dict.fromkeys([*type(actor).capabilities, *values, *(c.name for c in commands)])
        ),
        config_id=config_id,
        device_id=device_id,
        device_type=_device_type(device),
        device_class="actuator" if commands else "sensor",
        entity_type="device",
        available_commands=[
            build(
                CommandOption,
                id=spec.name,
                label=spec.description or spec.name.replace("_", " ").capitalize(),
                kind="action",
                args_schema={"type": "object"},
            )
            for spec in commands
        ],
        dashboard=build(
            Dashboard,
            allowed_widgets=widgets or ["status"],
            default_widget=default_widget,
            recommended_widgets=(widgets or ["status"])[:2],
        ),
        metadata={"actor": type(actor).__name__, "units": dict(units), **metadata},
        parent_device_id=parent_device_id,
    )


def _device_type(device: DeviceSlice) -> str:
    actor = device.supervisor.actor
    return str(getattr(actor.config, "device_type", None) or type(actor).__name__)


def _describe(spec: Any) -> str:
    return str(spec.description or spec.name.replace("_", " "))


def _state_entry(device: DeviceSlice) -> StateEntry:
    return build(
        StateEntry,
        config_id=device.identity.config_id,
        device_id=device.identity.device_id,
        latest_state=redact(dict(device.latest_state)),
        last_updated=device.state_updated,
    )


def _child_entry(device: DeviceSlice, child: ChildView) -> StateEntry:
    return build(
        StateEntry,
        config_id=device.identity.config_id,
        device_id=child.device_id,
        latest_state=redact(dict(child.latest_state)),
        last_updated=child.last_seen,
        parent_device_id=device.identity.device_id,
        last_seen=child.last_seen,
        observed_at=child.observed_at,
        available=child.available,
    )


def _event_view(record: EventRecord, container_id: str | None) -> EventView:
    identity = record.identity
    return build(
        EventView,
        event_type=record.event_type,
        source=record.source,
        payload=redact(dict(record.data)),
        device_id=record.device_id,
        container_id=identity.container_id or container_id,
        integration_id=identity.integration_id,
        config_id=identity.config_id,
        severity=record.severity,
        event_id=record.event_id,
        ts=from_unix(record.created_at),
        topic=None,
        received_at=from_unix(record.created_at),
    )


async def _refresh(devices: list[DeviceSlice], request_id: str) -> RefreshReceipt:
    """Read every listed device now, through its mailbox; one receipt for the request."""
    outcomes: list[RefreshOutcome] = []

    async def one(device: DeviceSlice) -> None:
        config_id = device.identity.config_id
        if device.supervisor.actor.mode != "poll":
            outcomes.append(_outcome(config_id, "not_applicable", "a push actor: it reports"))
            return
        try:
            result = await device.supervisor.refresh(timeout=REFRESH_TIMEOUT)
        except RefreshUnsupported as exc:
            outcomes.append(_outcome(config_id, "unsupported", exc.message))
        except ActorCallError as exc:
            outcomes.append(_outcome(config_id, "failed", exc.message))
        else:
            outcomes.append(_outcome(config_id, "refreshed", None, result.observed_at))

    async with trio.open_nursery() as nursery:
        for device in devices:
            nursery.start_soon(one, device)
    outcomes.sort(key=lambda o: o.config_id)
    return _receipt(request_id, outcomes)


def _outcome(
    config_id: str,
    status: Literal["refreshed", "not_applicable", "unsupported", "failed"],
    message: str | None,
    observed_at: datetime | None = None,
) -> RefreshOutcome:
    return build(
        RefreshOutcome, config_id=config_id, status=status, message=message, observed_at=observed_at
    )


def _receipt(request_id: str, outcomes: Iterable[RefreshOutcome]) -> RefreshReceipt:
    """``performed`` exactly when some device was read; push actors are not failures."""
    outcomes = list(outcomes)
    observed = [o.observed_at for o in outcomes if o.observed_at is not None]
    failed = [o for o in outcomes if o.status == "failed"]
    status: Literal["refreshed", "unsupported", "failed"]
    if observed:
        status = "refreshed"
    elif failed:
        status = "failed"
    else:
        status = "unsupported"
    problems = [f"{o.config_id}: {o.message}" for o in outcomes if o.status != "refreshed"]
    message = "; ".join(problems) or None
    if not outcomes:
        message = "no configured device"
    return build(
        RefreshReceipt,
        request_id=request_id,
        performed=bool(observed),
        status=status,
        observed_at=max(observed) if observed else None,
        source="device",
        message=message,
        error=None if observed else status,
        devices=outcomes,
    )
