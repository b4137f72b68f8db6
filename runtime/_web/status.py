"""The live status page: ``/status`` (static HTML, CSS and a script from the package) and
the data it reads, ``/status/data`` and ``/status/device/<config_id>``.

The page carries no data, so it and its two assets are open in every auth mode
(``OPEN_ROUTES`` in ``app.py``); the data routes need the integration token in managed mode
like every other route. The page asks for the token once, keeps it in the tab's session
storage and sends it as a header, never in a URL.

``/status/data`` is polled every ``STATUS_REFRESH_SECONDS`` by every open page, at any
fleet size, so it builds rows only for the page it answers (a health snapshot costs tens
of microseconds; the whole fleet's would hold up every actor at 5,000 devices) and only
reads counters for the rest. Costs are in docs/benchmarks.md (bench/status.py).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from importlib import resources
from typing import Any, cast

import trio
from quart import Blueprint, Response, current_app
from quart_schema import hide, validate_querystring, validate_response
from quart_trio import QuartTrio

from .._contract import (
    STATUS_REFRESH_SECONDS,
    DeviceDelivery,
    DeviceStatusAnswer,
    HealthTransition,
    Page,
    RuntimeFigures,
    StatusAnswer,
    StatusChild,
    StatusEvent,
    StatusFigures,
    StatusFilters,
    StatusQuery,
    StatusReading,
    StatusRow,
    StatusSummary,
    build,
    from_unix,
)
from .._health import ActorHealth
from .._redact import redact, redact_text
from .._runtime import Runtime
from .._sink import EventRecord
from .._supervisor import Supervisor
from .context import RUNTIME_KEY, current_runtime
from .health import (
    delivery_stats,
    error_view,
    integration_info,
    rehydration_report,
    runtime_figures,
)
from .history import HealthHistory, Transition
from .problem import Problem

__all__ = ["PAGE_PATHS", "blueprint"]

blueprint = Blueprint("status", __name__)

_STATIC = resources.files(__package__) / "static"
#: The page and its assets, read once when the module loads; served from memory.
_FILES: Mapping[str, tuple[bytes, str]] = {
    name: ((_STATIC / name).read_bytes(), kind)
    for name, kind in (
        ("status.html", "text/html; charset=utf-8"),
        ("status.css", "text/css; charset=utf-8"),
        ("status.js", "text/javascript; charset=utf-8"),
    )
}
#: The paths that carry no data: open in every auth mode.
PAGE_PATHS = frozenset({"/status", "/status/static/status.css", "/status/static/status.js"})
#: Nothing but the page's own files; its data only from this origin; no framing.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_HISTORY_KEY = "piphi.status.history"
#: Events shown in a device's detail, newest first.
_EVENTS_SHOWN = 20


# -- the page ------------------------------------------------------------------------------


@blueprint.get("/status")
@hide
async def page() -> Response:
    """The status page (no data: it reads ``/status/data``)."""
    return _file("status.html")


@blueprint.get("/status/static/<name>")
@hide
async def asset(name: str) -> Response:
    if name not in ("status.css", "status.js"):
        raise Problem(404, f"No asset {name!r}.", code="not_found")
    return _file(name)


def _file(name: str) -> Response:
    body, kind = _FILES[name]
    return Response(body, content_type=kind, headers=_HEADERS)


# -- the data --------------------------------------------------------------------------------


@blueprint.get("/status/data")
@validate_querystring(StatusQuery)
@validate_response(StatusAnswer)
async def data(query_args: StatusQuery) -> StatusAnswer:
    """A summary of the runtime and one page of compact device rows, by config id."""
    rt = current_runtime()
    by_state, chosen = _select(rt.actors, query_args.state, query_args.q)
    offset, limit = query_args.offset, query_args.limit
    page = chosen[offset : offset + limit]
    following = offset + len(page)
    now = datetime.now(UTC)
    return build(
        StatusAnswer,
        summary=_summary(rt, by_state),
        rows=[_row(s, s.health(), now) for s in page],
        page=build(
            Page,
            matched=len(chosen),
            offset=offset,
            limit=limit,
            next_offset=following if following < len(chosen) else None,
        ),
        filters=build(StatusFilters, state=query_args.state, q=query_args.q),
        refresh_s=STATUS_REFRESH_SECONDS,
        generated_at=now,
    )


@blueprint.get("/status/device/<path:config_id>")
@validate_response(DeviceStatusAnswer)
async def device(config_id: str) -> DeviceStatusAnswer:
    """One device in detail: its row, latest state, recent events and health history."""
    rt = current_runtime()
    supervisor = rt.actors.get(config_id) or next(
        (s for s in rt.actors if s.identity.config_id == config_id), None
    )
    if supervisor is None:
        raise Problem(
            404,
            f"No configured device {config_id!r}.",
            code="unknown_device",
            hint="Use a config id from /status/data; the device may have been removed.",
        )
    health = supervisor.health()
    now = datetime.now(UTC)
    figures = rt.outbox.device_figures(health.config_id)
    last = figures["last_delivered"]
    return build(
        DeviceStatusAnswer,
        row=_row(supervisor, health, now),
        figures=_figures(health),
        delivery=build(
            DeviceDelivery,
            accepted=figures["accepted"],
            delivered=figures["delivered"],
            last_delivered=None if last is None else from_unix(last),
        ),
        config=redact(supervisor.actor.config.model_dump(mode="json")),
        **_latest(supervisor),
        events=[_event(e) for e in reversed(supervisor.recent_events()[-_EVENTS_SHOWN:])],
        history=[_transition(t) for t in _history().of(supervisor.identity.id)],
        children=_children(supervisor),
    )


def _select(
    actors: Iterable[Supervisor], state: str | None, q: str | None
) -> tuple[dict[str, int], list[Supervisor]]:
    """Every actor counted by state, and those matching the filters, by config id.

    This runs over the whole fleet on every refresh of every open page, so it reads each
    state's stored value (``_value_``: ``.value`` and hashing a member are Python-level
    calls, about a microsecond per device) and sorts with a key made in C."""
    by_state: dict[str, int] = {}
    needle = q.lower() if q else None
    chosen = []
    for supervisor in actors:
        current: str = supervisor.state._value_
        by_state[current] = by_state.get(current, 0) + 1
        if state and current != state:
            continue
        if needle:
            identity = supervisor.identity
            # One lower() per device: the ids joined by a character no search can span.
            ids = f"{identity.config_id}\n{identity.device_id}\n{identity.id}"
            if needle not in ids.lower():
                continue
        chosen.append(supervisor)
    chosen.sort(key=_ORDER)
    return by_state, chosen


_ORDER = operator.attrgetter("identity.config_id", "identity.id")


def _summary(rt: Runtime, by_state: dict[str, int]) -> StatusSummary:
    stats = rt.outbox.stats()
    figures = runtime_figures(RuntimeFigures, rt, stats, by_state)
    return build(
        StatusSummary,
        status="degraded" if figures.concerns else "ok",
        integration=integration_info(rt),
        mode="managed" if rt.managed else "adopted",
        runtime=figures,
        delivery=delivery_stats(stats),
        rehydration=rehydration_report(rt.rehydration),
        by_state=by_state,
    )


def _row(supervisor: Supervisor, health: ActorHealth, now: datetime) -> StatusRow:
    return build(
        StatusRow,
        config_id=health.config_id,
        device_id=health.device_id,
        actor=health.actor,
        state=health.state.value,
        since=health.state_since,
        available=health.available,
        # Added to ActorHealth by the devices work (issue 13); absent before it.
        reason=health.availability_reason,
        restarts=health.restarts_total,
        error=error_view(health.last_error),
        poll_s=health.poll_duration_last,
        poll_p95_s=health.poll_duration_p95,
        late_s=_lateness(health, now),
        overruns=health.overruns,
        last_data=supervisor.latest_readings()[1],
    )


def _lateness(health: ActorHealth, now: datetime) -> float | None:
    """How late the poll in progress started after its due time, or how long the next
    one is overdue; None when no poll is scheduled (push actors, stopping)."""
    due = health.next_poll_due
    if due is None:
        return None
    started, ended = health.last_poll_started, health.last_poll_ended
    if started is not None and (ended is None or started > ended):
        return round(max(0.0, (started - due).total_seconds()), 4)  # due is its own
    return round(max(0.0, (now - due).total_seconds()), 4)


def _figures(health: ActorHealth) -> StatusFigures:
    return build(
        StatusFigures,
        restarts_in_window=health.restarts_in_window,
        consecutive_failures=health.consecutive_failures,
        polls=health.polls,
        readings=health.readings,
        poll_p50_s=health.poll_duration_p50,
        last_poll_started=health.last_poll_started,
        last_poll_ended=health.last_poll_ended,
        next_poll_due=health.next_poll_due,
    )


def _latest(supervisor: Supervisor) -> dict[str, Any]:
    """The device's latest state (its readings, then what it published) and readings."""
    readings, _ = supervisor.latest_readings()
    published, updated = supervisor.published_state()
    state: dict[str, Any] = {r.metric: r.value for r in readings}
    state.update(published)
    return {
        "latest_state": redact(state),
        "state_updated": updated,
        "readings": [
            build(StatusReading, metric=r.metric, value=redact(r.value), unit=r.unit)
            for r in readings
        ],
    }


def _event(record: EventRecord) -> StatusEvent:
    return build(
        StatusEvent,
        event_type=record.event_type,
        severity=record.severity,
        at=from_unix(record.created_at),
        data=redact(dict(record.data)),
    )


def _transition(t: Transition) -> HealthTransition:
    return build(
        HealthTransition,
        at=from_unix(t.at),
        state=t.state,
        available=t.available,
        reason=t.reason,
        restarts=t.restarts,
        error=None if t.error is None else redact_text(t.error),
    )


def _children(supervisor: Supervisor) -> list[StatusChild]:
    """The devices a gateway reports for (``runtime/_children.py``)."""
    return [
        build(StatusChild, device_id=c.device_id, available=c.available, last_data=c.last_seen)
        for c in supervisor.children()
    ]


# -- the health history's watch ----------------------------------------------------------------


def _history() -> HealthHistory:
    found = current_app.extensions.get(_HISTORY_KEY)
    return found[0] if found is not None else HealthHistory()


@blueprint.before_app_serving
async def _start_history() -> None:
    """Watch the actors' states while the app serves (see ``history.py``)."""
    app = cast(QuartTrio, current_app._get_current_object())  # type: ignore[attr-defined]
    history, scope = HealthHistory(), trio.CancelScope()
    app.extensions[_HISTORY_KEY] = (history, scope)

    def find() -> Runtime | None:
        runtime = app.extensions.get(RUNTIME_KEY)
        return runtime if isinstance(runtime, Runtime) else None

    async def watch() -> None:
        with scope:
            await history.watch(find)

    app.nursery.start_soon(watch)


@blueprint.after_app_serving
async def _stop_history() -> None:
    found = current_app.extensions.pop(_HISTORY_KEY, None)
    if found is not None:
        found[1].cancel()
