"""``/health`` and ``/diagnostics``: the runtime's figures and every actor's health.

Both are built from one outbox snapshot per request. ``/diagnostics`` builds records only
for the page it answers: a record costs tens of microseconds, and thousands of them in
one answer would hold up every actor and delivery.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from quart import Blueprint, current_app
from quart_schema import validate_querystring, validate_response

from .._contract import (
    ActorRecord,
    AuthInfo,
    ChildHealth,
    ChildrenHealth,
    CoreLink,
    DeliveryStats,
    DeviceDelivery,
    Diagnostics,
    DiagnosticsAnswer,
    DiagnosticsFilters,
    DiagnosticsQuery,
    ErrorView,
    HealthAnswer,
    HealthConcern,
    HealthFigures,
    IntegrationInfo,
    LinkError,
    MemoryFigures,
    Page,
    Recovery,
    Rehydration,
    RehydrationSource,
    RuntimeFigures,
    SourcesFigures,
    StartingFigures,
    StorageFigures,
    build,
    from_unix,
)
from .._health import ErrorRecord, wall_clock
from .._lifecycle import ActorState
from .._outbox import LinkStatus, OutboxStats
from .._redact import redact_text
from .._rehydrate import RehydrationReport
from .._runtime import Runtime
from .._supervisor import Supervisor
from .context import RUNTIME_KEY, current_integration, current_runtime

__all__ = [
    "blueprint",
    "delivery_stats",
    "error_view",
    "health_answer",
    "integration_info",
    "rehydration_report",
    "runtime_figures",
    "unavailable_health",
]

blueprint = Blueprint("health", __name__)


@blueprint.get("/health")
@validate_response(HealthAnswer, 200)
@validate_response(HealthAnswer, 503)
async def health() -> HealthAnswer | tuple[HealthAnswer, int]:
    """Liveness and a summary: ``ok``, or ``degraded`` with the concerns.

    Open in every auth mode. Answered before Quart when the runtime is up (``app.py``);
    this handler answers while it is starting or has failed (503).
    """
    return unavailable_health(), 503


@blueprint.get("/diagnostics")
@validate_querystring(DiagnosticsQuery)
@validate_response(DiagnosticsAnswer)
async def diagnostics(query_args: DiagnosticsQuery) -> DiagnosticsAnswer:
    """The runtime's figures and a page of actors' health, ordered by config id."""
    rt = current_runtime()
    by_state, chosen = _select(rt, query_args.state, query_args.device_id)
    offset, limit = query_args.offset, query_args.limit
    page = chosen[offset : offset + limit]
    following = offset + len(page)
    stats = rt.outbox.stats()
    return build(
        DiagnosticsAnswer,
        status="degraded" if rt.concerns(by_state) else "ok",
        integration=integration_info(rt),
        diagnostics=build(
            Diagnostics,
            runtime=runtime_figures(RuntimeFigures, rt, stats, by_state),
            delivery=delivery_stats(stats),
            auth=build(
                AuthInfo,
                mode="managed" if rt.managed else "adopted",
                token_source=rt.token_source,
                container_id=rt.client.container_id,
                token_known=rt.client.has_token,
            ),
            rehydration=rehydration_report(rt.rehydration),
            actors_by_state=by_state,
            actors=[_actor_record(rt, s) for s in page],
            actors_page=build(
                Page,
                matched=len(chosen),
                offset=offset,
                limit=limit,
                next_offset=following if following < len(chosen) else None,
            ),
            filters=build(
                DiagnosticsFilters, state=query_args.state, device_id=query_args.device_id
            ),
            sources=source_figures(rt),
        ),
    )


def source_figures(rt: Runtime) -> SourcesFigures | None:
    """The shared sources' connections and counts; None (left out) when none is declared."""
    if not rt.sources.links:
        return None
    return SourcesFigures.model_validate(rt.sources.figures())


def health_answer(rt: Runtime) -> HealthAnswer:
    """``/health`` of a running runtime."""
    by_state = count_by_state(rt)
    figures = runtime_figures(
        HealthFigures,
        rt,
        rt.outbox.stats(),
        by_state,
        rehydration=rehydration_report(rt.rehydration),
    )
    return build(
        HealthAnswer,
        status="degraded" if figures.concerns else "ok",
        ok=True,
        integration=integration_info(rt),
        runtime=figures,
        metadata={"runtime": "piphi-runtime", "managed": rt.managed},
    )


def unavailable_health() -> HealthAnswer:
    """``/health`` while the runtime is not up: starting, or failed (with why)."""
    rt = current_app.extensions.get(RUNTIME_KEY)
    failure = rt.failure if isinstance(rt, Runtime) else None
    return build(
        HealthAnswer,
        status="failed" if failure else "starting",
        ok=False,
        integration=_info(current_integration().describe()),
        runtime=build(StartingFigures, error=failure or "starting"),
        metadata={},
    )


def count_by_state(rt: Runtime) -> dict[str, int]:
    by_state: dict[str, int] = {}
    for supervisor in rt.actors:
        name = supervisor.state.value
        by_state[name] = by_state.get(name, 0) + 1
    return by_state


def integration_info(rt: Runtime) -> IntegrationInfo:
    return _info(rt.integration.describe())


def _info(described: Mapping[str, str]) -> IntegrationInfo:
    return build(
        IntegrationInfo, id=described["id"], name=described["name"], version=described["version"]
    )


def _select(
    rt: Runtime, state: str | None, device_id: str | None
) -> tuple[dict[str, int], list[Supervisor]]:
    """Every actor counted by state, and those matching the filters, by config id."""
    by_state: dict[str, int] = {}
    chosen = []
    for supervisor in rt.actors:
        current = supervisor.state.value
        by_state[current] = by_state.get(current, 0) + 1
        identity = supervisor.identity
        if (
            device_id
            and device_id not in (identity.device_id, identity.id)
            and not supervisor.has_child(device_id)
        ):
            continue
        if state and current != state:
            continue
        chosen.append(supervisor)
    chosen.sort(key=lambda s: (s.identity.config_id, s.identity.id))
    return by_state, chosen


def runtime_figures(
    kind: type[RuntimeFigures],
    rt: Runtime,
    stats: OutboxStats,
    by_state: Mapping[str, int],
    **extra: Any,
) -> Any:
    concerns = rt.concerns(by_state)
    return build(
        kind,
        uptime_s=round(time.time() - rt.started_at, 3),
        devices=len(rt.actors),
        failed_devices=by_state.get(ActorState.FAILED.value, 0),
        generation=rt.sync.last_generation,
        core_link=_link(stats.link),
        queue_depth=stats.queue_depth,
        spool_depth=stats.spool_depth,
        dropped=stats.dropped,
        concerns=[
            build(HealthConcern, code=c.code, message=c.message, hint=c.hint) for c in concerns
        ],
        memory=MemoryFigures.model_validate(rt.memory.to_dict()),
        storage=StorageFigures.model_validate(rt.figures()["storage"]),
        **extra,
    )


def _link(link: LinkStatus) -> CoreLink:
    error = link.last_error
    return build(
        CoreLink,
        state=link.state,
        since=from_unix(link.since),
        last_error=None if error is None else LinkError.model_validate(error),
        next_probe=link.next_probe,
    )


def delivery_stats(stats: OutboxStats) -> DeliveryStats:
    fields = {name: getattr(stats, name) for name in DeliveryStats.model_fields}
    fields["link"] = _link(stats.link)
    if stats.recovery is not None:
        fields["recovery"] = Recovery.model_validate(stats.recovery)
    return build(DeliveryStats, **fields)


def rehydration_report(report: RehydrationReport | None) -> Rehydration | None:
    if report is None:
        return None
    return build(
        Rehydration,
        ok=report.ok,
        sources=[build(RehydrationSource, **s.to_dict()) for s in report.sources],
    )


def _actor_record(rt: Runtime, supervisor: Supervisor) -> ActorRecord:
    health = supervisor.health()
    delivery = rt.outbox.device_figures(health.config_id)
    last = delivery["last_delivered"]
    return build(
        ActorRecord,
        **{name: getattr(health, name) for name in _HEALTH_FIELDS},
        state=health.state.value,
        last_error=error_view(health.last_error),
        latest_readings_at=supervisor.latest_readings()[1],
        delivery=build(
            DeviceDelivery,
            accepted=delivery["accepted"],
            delivered=delivery["delivered"],
            last_delivered=None if last is None else from_unix(last),
        ),
        children=_children(supervisor),
    )


_HEALTH_FIELDS = tuple(
    name
    for name in ActorRecord.model_fields
    if name not in ("state", "last_error", "latest_readings_at", "delivery", "children")
)


def _children(supervisor: Supervisor) -> ChildrenHealth | None:
    """A gateway's line per child; None (left out) for an actor that reports none."""
    children = supervisor.children()
    if not children and not supervisor.reports_children:
        return None
    return build(
        ChildrenHealth,
        total=len(children),
        unavailable=sum(1 for c in children if not c.available),
        stale_after_s=supervisor.child_stale_after,
        max_children=type(supervisor.actor).max_children,
        devices=[
            build(
                ChildHealth,
                device_id=c.device_id,
                available=c.available,
                last_seen=c.last_seen,
                last_seen_age_s=round(c.last_seen_age, 3),
                observed_at=c.observed_at,
            )
            for c in children
        ],
    )


def error_view(error: ErrorRecord | None) -> ErrorView | None:
    if error is None:
        return None
    return build(
        ErrorView,
        type=error.type,
        # The one free text in a health record: it may quote a secret.
        message=redact_text(error.message),
        code=error.code,
        hint=error.hint,
        phase=error.phase,
        at=wall_clock(error.at),
    )
