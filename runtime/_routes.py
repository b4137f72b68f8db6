"""The PiPhi route contract (CONTRACT.md, Runtime routes) as a Quart-Trio app.

The app holds no long-lived work of its own: it reads and drives a ``Runtime`` found in
``app.extensions``. ``piphi-runtime serve`` opens the runtime in its own root nursery and
serves the app beside it, so a runtime failure ends the process (STACK.md section 2).
Under ``hypercorn --worker-class trio module:app`` the app opens the runtime itself in
``before_serving``; a failure is then recorded, ``/health`` answers 503, and the process
is sent SIGTERM rather than left answering 200s.

Every 4xx and 5xx is RFC 9457 problem+json; every body and error shown is redacted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import trio
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from ._config import DeviceIdentity
from ._errors import (
    ActorBusy,
    ActorCallError,
    ActorNotReady,
    CallTimeout,
    InvalidConfig,
    PiPhiError,
    RefreshUnsupported,
    UnknownCommand,
)
from ._integration import Integration, default_entity
from ._lifecycle import ActorState
from ._openapi import docs_page, openapi_document
from ._outbox import OutboxStats
from ._problem import Problem, problem_response, validation_errors
from ._redact import redact, redact_text, secrets
from ._registry import DeviceSlice
from ._runtime import Runtime, open_runtime

__all__ = ["RUNTIME_KEY", "build_app"]

log = logging.getLogger("runtime.routes")

RUNTIME_KEY = "piphi.runtime"
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]
MAX_BODY = 1024 * 1024
REFRESH_TIMEOUT = 10.0
DIAGNOSTICS_PAGE = 100
"""Actor records in one /diagnostics answer unless ``limit`` asks for more."""
DIAGNOSTICS_PAGE_MAX = 1000
OPEN_ROUTES = frozenset({"/health"})


def _iso(moment: datetime | float | None) -> str | None:
    if moment is None:
        return None
    if isinstance(moment, float | int):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.isoformat()


def build_app(integration: Integration) -> QuartTrio:
    app = QuartTrio(integration.id)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.config["BACKGROUND_TASK_SHUTDOWN_TIMEOUT"] = 0.5
    app.extensions["piphi.integration"] = integration
    _install_lifecycle(app, integration)
    _install_errors(app)
    app.asgi_app = _health_first(app, app.asgi_app)  # type: ignore[method-assign, assignment]

    def runtime() -> Runtime:
        found = app.extensions.get(RUNTIME_KEY)
        if found is None:
            raise Problem(503, "The runtime is starting or stopping.", code="runtime_unavailable")
        assert isinstance(found, Runtime)
        return found

    @app.before_request
    async def authenticate() -> None:
        headers = request.headers
        container_id = headers.get("X-Container-Id")
        token = headers.get("X-PiPhi-Integration-Token")
        rt = app.extensions.get(RUNTIME_KEY)
        if not isinstance(rt, Runtime) or request.path in OPEN_ROUTES:
            return  # open routes neither need nor teach credentials
        if rt.managed and not rt.client.token_matches(token):
            raise Problem(
                401,
                "This runtime requires Core's integration token.",
                code="auth_required",
                hint="Send the X-PiPhi-Integration-Token header Core gave this runtime.",
                headers={"WWW-Authenticate": "PiPhi-Token"},
            )
        rt.learn_auth(container_id, token)

    # -- health and diagnostics --------------------------------------------------------

    @app.get("/health")
    async def health() -> Response:
        rt = app.extensions.get(RUNTIME_KEY)
        if not isinstance(rt, Runtime) or rt.failure:
            detail = rt.failure if isinstance(rt, Runtime) else "starting"
            body = {
                "status": "failed" if isinstance(rt, Runtime) else "starting",
                "ok": False,
                "integration": integration.describe(),
                "runtime": {"error": detail},
                "metadata": {},
            }
            return _json(body, 503)
        return _json(_health(rt))

    @app.get("/diagnostics")
    async def diagnostics() -> Response:
        rt = runtime()
        state = request.args.get("state")
        device_id = request.args.get("device_id")
        offset = _count_arg("offset", 0, 0, None)
        limit = _count_arg("limit", DIAGNOSTICS_PAGE, 1, DIAGNOSTICS_PAGE_MAX)
        by_state: dict[str, int] = {}
        chosen = []
        for supervisor in rt.actors:
            current = supervisor.state.value
            by_state[current] = by_state.get(current, 0) + 1
            identity = supervisor.identity
            if device_id and device_id not in (identity.device_id, identity.id):
                continue
            if state and current != state:
                continue
            chosen.append(supervisor)
        # Only the page's records are built: a record costs tens of microseconds, and
        # thousands of them in one answer would hold up every actor and delivery.
        chosen.sort(key=lambda s: (s.identity.config_id, s.identity.id))
        page = chosen[offset : offset + limit]
        actors = []
        for supervisor in page:
            identity = supervisor.identity
            record = supervisor.health().to_dict()
            error = record.get("last_error")
            if error:  # the one free text in a health record: it may quote a secret
                error["message"] = redact_text(str(error.get("message", "")))
            record["latest_readings_at"] = _iso(supervisor.latest_readings()[1])
            delivery = rt.outbox.device_figures(identity.config_id)
            delivery["last_delivered"] = _iso(delivery["last_delivered"])
            record["delivery"] = delivery
            actors.append(record)
        following = offset + len(page)
        stats = rt.outbox.stats()
        figures = _runtime_figures(rt, stats, by_state)
        body = {
            "status": figures["status"],
            "integration": integration.describe(),
            "diagnostics": {
                "runtime": figures,
                "delivery": stats.to_dict(),
                "auth": {
                    "mode": "managed" if rt.managed else "adopted",
                    "token_source": rt.token_source,
                    "container_id": rt.client.container_id,
                    "token_known": rt.client.has_token,
                },
                "rehydration": rt.rehydration.to_dict() if rt.rehydration else None,
                "actors_by_state": by_state,
                "actors": actors,
                "actors_page": {
                    "matched": len(chosen),
                    "offset": offset,
                    "limit": limit,
                    "next_offset": following if following < len(chosen) else None,
                },
                "filters": {"state": state, "device_id": device_id},
            },
        }
        return _json(body)

    # -- discovery -----------------------------------------------------------------------

    async def discover() -> Response:
        runtime()  # answers 503 while the runtime is not up
        body = await _body(optional=True) if request.method == "POST" else dict(request.args)
        secrets.collect(body)
        inputs = body.get("inputs")
        if not isinstance(inputs, Mapping):
            skip = {"container_id", "containerId", "driver_pid", "driverPid", "inputs"}
            inputs = {k: v for k, v in body.items() if k not in skip}
        devices: list[Any] = []
        if integration.discover is not None:
            try:
                with trio.fail_after(30):
                    devices = list(await integration.discover(inputs))
            except trio.TooSlowError:
                raise Problem(504, "Discovery did not finish within 30 s.") from None
            except PiPhiError as exc:
                raise Problem.from_error(502, exc) from None
        return _json({"devices": redact(devices)})

    for path in ("/discover", "/discovery"):
        app.add_url_rule(path, f"discover{path}", discover, methods=["GET", "POST"])

    # -- configuration -------------------------------------------------------------------

    @app.post("/config")
    async def config() -> Response:
        rt = runtime()
        body = await _body()
        secrets.collect(body)
        _learn_body_container(rt, body)
        try:
            result = await rt.sync.apply_config(body)
        except InvalidConfig as exc:
            raise Problem.from_error(422, exc) from None
        return _json(
            {
                "status": "configured",
                "config_id": result.config_id,
                "container_id": rt.client.container_id,
                "metadata": {"action": result.action, "generation": rt.sync.last_generation},
            }
        )

    async def config_sync() -> Response:
        rt = runtime()
        body = await _body()
        # The configs' secrets are remembered as each config is validated; walking all of
        # them here cost ~95 ms at 10,000 configs on every sync, changed or not.
        secrets.collect({k: v for k, v in body.items() if k != "configs"})
        _learn_body_container(rt, body)
        token = body.get("internal_token") or body.get("internalToken")
        if not isinstance(token, str) or not token:
            token = request.headers.get("X-PiPhi-Integration-Token")
        rt.learn_auth(None, token, from_sync=True)
        try:
            result = await rt.sync.apply_snapshot(body)
        except InvalidConfig as exc:
            raise Problem.from_error(422, exc) from None
        out = result.to_dict()
        out["container_id"] = out.get("container_id") or rt.client.container_id
        out["metadata"] = {"duration_ms": out.pop("duration_ms", None), "note": out.pop("note")}
        return _json(out)

    for path in ("/config/sync", "/configs/sync"):
        app.add_url_rule(path, f"sync{path}", config_sync, methods=["POST"])

    async def deconfigure(config_id: str | None = None) -> Response:
        rt = runtime()
        if config_id is None:
            body = await _body(optional=True)
            config_id = _deconfigure_target(body)
        result = await rt.sync.remove(config_id)
        if not result.removed:
            # Maybe Core named it by its config_id rather than the local id.
            device = rt.registry.get(config_id)
            if device is not None:
                result = await rt.sync.remove(device.identity.id)
        return _json(
            {
                "status": "deconfigured",
                "config_id": config_id,
                "removed": result.removed,
                "metadata": {"active_config_ids": list(rt.sync.active_config_ids)},
            }
        )

    app.add_url_rule("/deconfigure", "deconfigure", deconfigure, methods=["POST"])
    app.add_url_rule("/deconfigure/<config_id>", "deconfigure_path", deconfigure, methods=["POST"])

    # -- what the devices know -----------------------------------------------------------

    @app.get("/events")
    async def events() -> Response:
        rt = runtime()
        records = list(rt.sync.recent_events)
        for device in rt.registry:
            records.extend(device.recent_events)
        records.sort(key=lambda r: r.created_at)
        container_id = rt.client.container_id
        return _json({"events": [_event_view(r, container_id) for r in records[-200:]]})

    @app.get("/state")
    async def state() -> Response:
        rt = runtime()
        refresh = request.args.get("refresh", "").lower() in ("1", "true", "yes")
        request_id = request.args.get("refresh_request_id")
        wanted = request.args.get("config_id")
        if refresh and not request_id:
            raise Problem(
                400,
                "refresh=true needs a refresh_request_id.",
                code="refresh_request_id_required",
                hint="Add refresh_request_id=<id> to correlate the receipt.",
            )
        devices = rt.registry.select(lambda i: not wanted or wanted in _ids(i))
        if wanted and not devices:
            raise Problem(404, f"No configured device {wanted!r}.", code="unknown_device")
        receipt = await _refresh(devices, request_id) if refresh else None
        if refresh:
            devices = [rt.registry.get(d.identity.id) or d for d in devices]
        entries = {
            d.identity.config_id: {
                "config_id": d.identity.config_id,
                "device_id": d.identity.device_id,
                "latest_state": _latest_state(d),
                "last_updated": _iso(_last_updated(d)),
            }
            for d in devices
        }
        body: dict[str, Any] = {"entries": entries}
        if receipt is not None:
            body["refresh"] = receipt
        return _json(body)

    @app.get("/entities")
    async def entities() -> Response:
        rt = runtime()
        out: list[dict[str, Any]] = []
        capabilities: dict[str, Any] = {}
        commands: dict[str, Any] = {}
        for device in rt.registry:
            # Declared entities are the author's, so they are redacted; defaults are ours.
            declared = [redact(dict(e)) for e in device.entities]
            for entity in declared or [default_entity(device)]:
                entity.setdefault("config_id", device.identity.config_id)
                entity.setdefault("device_id", device.identity.device_id)
                out.append(entity)
            for reading in device.readings:
                capabilities.setdefault(reading.metric, {"kind": "sensor", "unit": reading.unit})
            for spec in type(device.supervisor.actor).commands.values():
                commands.setdefault(spec.name, {"description": spec.description or spec.name})
                capabilities.setdefault(spec.name, {"kind": "action"})
        return _json({"entities": out, "capabilities": capabilities, "commands": commands})

    async def ui_config() -> Response:
        return _json(integration.ui_config())

    for path in ("/ui-config", "/ui"):
        app.add_url_rule(path, f"ui{path}", ui_config, methods=["GET"])

    @app.get("/contract")
    async def contract() -> Response:
        return _json(integration.contract())

    @app.get("/manifest.json")
    async def manifest() -> Response:
        port = os.environ.get("PORT")
        return _json(integration.manifest_document(int(port) if port and port.isdigit() else None))

    @app.get("/openapi.json")
    async def openapi() -> Response:
        return _json(openapi_document(integration))

    @app.get("/docs")
    async def docs() -> Response:
        return Response(docs_page(integration), content_type="text/html; charset=utf-8")

    # -- commands ------------------------------------------------------------------------

    @app.post("/command")
    async def command() -> Response:
        rt = runtime()
        raw = await _body()
        secrets.collect(raw)
        try:
            body = CommandRequest.model_validate(raw)
        except ValidationError as exc:
            raise Problem(
                422, "The command request is invalid.", errors=validation_errors(exc)
            ) from None
        device = _command_target(rt, body)
        key = request.headers.get("X-PiPhi-Idempotency-Key") or body.idempotency_key
        if key:
            fingerprint = command_fingerprint(body.command, device.identity.id, body.arguments)
            known = await rt.ledger.begin(key, fingerprint)
            if known is not None:
                return _replay(known, key, fingerprint, body.command)
        status, reply, never_ran = await _run_command(device, body)
        if key:
            with trio.CancelScope(shield=True):
                if never_ran:  # busy or restarting: a retry with this key must run it
                    await rt.ledger.forget(key)
                else:
                    await rt.ledger.finish(key, status, reply)
        return _json(reply, status)

    return app


# -- request helpers ---------------------------------------------------------------------


async def _body(*, optional: bool = False) -> dict[str, Any]:
    data = await request.get_data(as_text=False)
    if not data.strip():
        if optional:
            return {}
        raise Problem(400, "This route needs a JSON object body.", code="body_required")
    mimetype = request.mimetype
    if mimetype and not (mimetype == "application/json" or mimetype.endswith("+json")):
        raise Problem(
            415,
            f"Send the body as application/json, not {mimetype}.",
            code="unsupported_media_type",
        )
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Problem(400, f"The body is not valid JSON: {exc}", code="malformed_json") from None
    if not isinstance(body, dict):
        raise Problem(
            422,
            f"The body must be a JSON object, got {type(body).__name__}.",
            code="body_not_an_object",
        )
    return body


def _learn_body_container(rt: Runtime, body: Mapping[str, Any]) -> None:
    """A body's container id counts only when the header is absent (CONTRACT.md)."""
    if request.headers.get("X-Container-Id"):
        return
    container_id = body.get("container_id") or body.get("containerId")
    if isinstance(container_id, str) and container_id:
        rt.learn_auth(container_id, None)


def _deconfigure_target(body: Mapping[str, Any]) -> str:
    nested = body.get("config")
    candidates: list[Any] = []
    if isinstance(nested, Mapping):
        candidates += [nested.get("id"), nested.get("config_id"), nested.get("configId")]
    candidates += [body.get("config_id"), body.get("configId"), body.get("id")]
    for value in candidates:
        if isinstance(value, str) and value:
            return value
    raise Problem(
        422,
        "Name the config to remove.",
        code="config_id_required",
        hint='Send {"config_id": "..."}, {"config": {"id": "..."}} or POST /deconfigure/<id>.',
    )


def _ids(identity: DeviceIdentity) -> tuple[str, ...]:
    return (identity.id, identity.config_id, identity.device_id)


def _latest_state(device: DeviceSlice) -> dict[str, Any]:
    state = {r.metric: r.value for r in device.readings}
    state.update(device.latest_state)
    return redact(state)  # type: ignore[no-any-return]


def _last_updated(device: DeviceSlice) -> datetime | None:
    times = [t for t in (device.readings_at, device.state_updated) if t is not None]
    return max(times) if times else None


def _event_view(record: Any, container_id: str | None) -> dict[str, Any]:
    identity = record.identity
    return {
        "event_type": record.event_type,
        "source": record.source,
        "payload": redact(dict(record.data)),
        "device_id": record.device_id,
        "container_id": identity.container_id or container_id,
        "integration_id": identity.integration_id,
        "config_id": identity.config_id,
        "severity": record.severity,
        "event_id": record.event_id,
        "ts": _iso(record.created_at),
        "topic": None,
        "received_at": _iso(record.created_at),
    }


async def _refresh(devices: list[DeviceSlice], request_id: str | None) -> dict[str, Any]:
    """Read every listed device now, through its mailbox; one receipt for the request."""
    outcomes: dict[str, tuple[str, str | None, datetime | None]] = {}

    async def one(device: DeviceSlice) -> None:
        try:
            result = await device.supervisor.refresh(timeout=REFRESH_TIMEOUT)
        except RefreshUnsupported as exc:
            outcomes[device.identity.config_id] = ("unsupported", exc.message, None)
        except ActorCallError as exc:
            outcomes[device.identity.config_id] = ("failed", exc.message, None)
        else:
            outcomes[device.identity.config_id] = ("refreshed", None, result.observed_at)

    async with trio.open_nursery() as nursery:
        for device in devices:
            nursery.start_soon(one, device)
    statuses = {status for status, _, _ in outcomes.values()}
    observed = [t for _, _, t in outcomes.values() if t is not None]
    if statuses == {"refreshed"}:
        return {
            "request_id": request_id,
            "performed": True,
            "status": "refreshed",
            "observed_at": _iso(max(observed)),
            "source": "device",
            "devices": len(outcomes),
        }
    status = "unsupported" if statuses == {"unsupported"} else "failed"
    problems = {cid: msg for cid, (st, msg, _) in outcomes.items() if st != "refreshed"}
    return {
        "request_id": request_id,
        "performed": bool(observed),
        "status": status if not observed else "failed",
        "observed_at": _iso(max(observed)) if observed else None,
        "source": "device",
        "message": "; ".join(f"{cid}: {msg}" for cid, msg in sorted(problems.items()))
        or "no configured device",
        "error": status,
    }


# -- commands ------------------------------------------------------------------------------


class CommandTarget(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow")
    config_id: str | None = Field(default=None, alias="configId")
    device_id: str | None = Field(default=None, alias="deviceId")


class CommandRequest(BaseModel):
    """Both the newest (``target``/``params``) and the older (``args``) bodies."""

    model_config = ConfigDict(populate_by_name=True, extra="allow")
    command: str = Field(min_length=1)
    contract_version: str | None = None
    target: CommandTarget | None = None
    params: dict[str, Any] | None = None
    args: dict[str, Any] | None = None
    capability: str | None = None
    capability_requirements: list[Any] | None = None
    config_id: str | None = Field(default=None, alias="configId")
    device_id: str | None = Field(default=None, alias="deviceId")
    entity_id: str | None = Field(default=None, alias="entityId")
    idempotency_key: str | None = None
    command_id: str | None = None
    correlation_id: str | None = None

    @property
    def arguments(self) -> dict[str, Any]:
        return dict(self.params if self.params is not None else self.args or {})


def command_fingerprint(command: str, config_id: str, arguments: Mapping[str, Any]) -> str:
    """What an idempotency key promises to mean: this command, this device, these args."""
    canonical = json.dumps([command, config_id, arguments], sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _command_target(rt: Runtime, body: CommandRequest) -> DeviceSlice:
    config_id = (body.target.config_id if body.target else None) or body.config_id
    device_id = (body.target.device_id if body.target else None) or body.device_id
    if body.entity_id and not (config_id or device_id):
        config_id, _, entity_device = body.entity_id.partition(":")
        device_id = device_id or entity_device or None
    if config_id:
        found = rt.registry.select(lambda i: config_id in (i.config_id, i.id))
    elif device_id:
        found = rt.registry.select(lambda i: i.device_id == device_id)
    else:
        found = list(rt.registry)
    if device_id and config_id:
        found = [d for d in found if d.identity.device_id == device_id] or found
    if not found:
        raise Problem(
            404,
            f"No configured device matches {config_id or device_id!r}.",
            code="unknown_device",
            extra={"ok": False, "error": "unknown_device"},
        )
    if len(found) > 1:
        raise Problem(
            409,
            "The command's target matches several devices; name a config_id.",
            code="ambiguous_target",
            extra={
                "ok": False,
                "error": "ambiguous_target",
                "candidates": sorted(d.identity.config_id for d in found),
            },
        )
    device = found[0]
    cls = type(device.supervisor.actor)
    if body.command not in cls.commands:
        raise Problem(
            400,
            f"{cls.__name__} has no command {body.command!r}.",
            code="unsupported_command",
            extra={
                "ok": False,
                "error": "unsupported_command",
                "message": f"supported: {sorted(cls.commands)}",
            },
        )
    if body.capability and body.capability not in cls.commands:
        raise Problem(
            400,
            f"{cls.__name__} has no capability {body.capability!r}.",
            code="unsupported_capability",
            extra={"ok": False, "error": "unsupported_capability", "message": body.capability},
        )
    return device


async def _run_command(
    device: DeviceSlice, body: CommandRequest
) -> tuple[int, dict[str, Any], bool]:
    """``(status, reply, never_ran)``: never_ran when the actor refused it unseen."""
    try:
        result = await device.supervisor.command(body.command, body.arguments)
    except UnknownCommand as exc:
        return 400, _command_reply(body.command, None, exc, retryable=False), True
    except (ActorBusy, ActorNotReady) as exc:
        return 502, _command_reply(body.command, None, exc, retryable=True), True
    except ActorCallError as exc:
        return 502, _command_reply(body.command, None, exc, retryable=exc.retryable), False
    return 200, _command_reply(body.command, result, None, retryable=False), False


def _command_reply(
    command: str, result: Any, error: ActorCallError | None, *, retryable: bool
) -> dict[str, Any]:
    reply: dict[str, Any] = {
        "ok": error is None,
        "status": "success" if error is None else "failed",
        "command": command,
        "result": redact(result if isinstance(result, Mapping) else {"value": result})
        if error is None
        else {},
        "error": None if error is None else redact(error.to_dict()),
        "retryable": retryable,
        "replayed": False,
    }
    if isinstance(error, CallTimeout):
        reply["may_have_run"] = bool(error.details.get("started"))
    return reply


def _replay(known: Any, key: str, fingerprint: str, command: str) -> Response:
    if known.fingerprint != fingerprint:
        raise Problem(
            422,
            "This idempotency key was used for a different command.",
            code="idempotency_key_reused",
            hint="Use a new X-PiPhi-Idempotency-Key for a new command.",
        )
    if known.state == "done" and known.reply is not None:
        return _json({**known.reply, "replayed": True}, known.status or 200)
    raise Problem(
        409,
        "An earlier attempt with this idempotency key has no recorded outcome: it may have "
        "reached the device before the runtime stopped. It is not run again.",
        code="outcome_unknown",
        hint="Check the device's state (GET /state?refresh=true) before sending a new command "
        "with a new key.",
        extra={
            "ok": False,
            "status": "failed",
            "command": command,
            "error": "outcome_unknown",
            "retryable": False,
            "replayed": True,
            "started_at": _iso(known.started),
        },
    )


# -- health --------------------------------------------------------------------------------


def _runtime_figures(
    rt: Runtime, stats: OutboxStats, by_state: Mapping[str, int]
) -> dict[str, Any]:
    """The runtime-wide figures, with ``status``: degraded while anything reports a
    concern (``Runtime.concerns``), listed in ``concerns``."""
    link = stats.link.state
    concerns = rt.concerns(by_state)
    return {
        "status": "degraded" if concerns else "ok",
        "concerns": [c.to_dict() for c in concerns],
        "uptime_s": round(time.time() - rt.started_at, 3),
        "devices": len(rt.registry),
        "failed_devices": by_state.get(ActorState.FAILED.value, 0),
        "generation": rt.sync.last_generation,
        "core_link": {
            "state": link,
            "since": _iso(stats.link.since),
            "last_error": stats.link.last_error,
        },
        "queue_depth": stats.queue_depth,
        "spool_depth": stats.spool_depth,
        "dropped": stats.dropped,
        **rt.figures(),  # memory, and storage recovered at start-up
    }


def _health(rt: Runtime) -> dict[str, Any]:
    by_state: dict[str, int] = {}
    for supervisor in rt.actors:
        by_state[supervisor.state.value] = by_state.get(supervisor.state.value, 0) + 1
    figures = _runtime_figures(rt, rt.outbox.stats(), by_state)
    figures["rehydration"] = rt.rehydration.to_dict() if rt.rehydration else None
    return {
        "status": figures.pop("status"),
        "ok": True,
        "integration": rt.integration.describe(),
        "runtime": figures,
        "metadata": {"runtime": "piphi-runtime", "managed": rt.managed},
    }


def _count_arg(name: str, default: int, low: int, high: int | None) -> int:
    """A whole-number query argument within ``[low, high]``; a 400 names it otherwise."""
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"{low} or more"
        raise Problem(
            400,
            f"Query argument {name!r} must be a whole number {bounds}, got {raw!r}.",
            code="bad_query_argument",
            hint=f"Send {name}={default}, or leave it out.",
        )
    return value


def _json(body: Any, status: int = 200) -> Response:
    text = json.dumps(body, default=str, separators=(",", ":"))
    return Response(text, status=status, content_type="application/json")


# -- lifecycle and errors ------------------------------------------------------------------


def _health_first(app: QuartTrio, asgi_app: ASGIApp) -> ASGIApp:
    """Answer ``GET /health`` before Quart builds a request context (about 2 ms of CPU per
    request): liveness checks are the most frequent request and must stay fast while the
    event loop is busy with devices. Anything else, or a runtime not up, goes to Quart."""

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") == "http" and scope.get("path") == "/health":
            rt = app.extensions.get(RUNTIME_KEY)
            if scope.get("method") == "GET" and isinstance(rt, Runtime) and not rt.failure:
                body = json.dumps(_health(rt), default=str, separators=(",", ":")).encode()
                headers = [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await asgi_app(scope, receive, send)

    return asgi


def _install_lifecycle(app: QuartTrio, integration: Integration) -> None:
    """Open the runtime when served by the hypercorn CLI (``serve`` opens it itself)."""
    owned: dict[str, Any] = {}

    @app.before_serving
    async def start_runtime() -> None:
        if RUNTIME_KEY in app.extensions:
            return
        scope = trio.CancelScope()
        ready, done = trio.Event(), trio.Event()
        failed: list[BaseException] = []
        owned.update(scope=scope, done=done)

        async def run() -> None:
            try:
                with scope:
                    async with open_runtime(integration) as rt:
                        app.extensions[RUNTIME_KEY] = rt
                        ready.set()
                        await trio.sleep_forever()
            except Exception as exc:
                if not ready.is_set():
                    failed.append(exc)  # start-up failed: before_serving raises it below
                    return
                # The runtime died while serving: never keep answering 200s.
                log.critical("the runtime failed: %r; stopping the process", exc, exc_info=True)
                rt_ = app.extensions.get(RUNTIME_KEY)
                if isinstance(rt_, Runtime):
                    rt_.failure = repr(exc)
                os.kill(os.getpid(), signal.SIGTERM)
            finally:
                ready.set()
                done.set()

        # start_soon, not start(): the runtime opens nurseries of its own before it is
        # ready, and a task cannot be moved into app.nursery with those open.
        app.nursery.start_soon(run)
        await ready.wait()
        if failed:
            raise failed[0]

    @app.after_serving
    async def stop_runtime() -> None:
        scope, done = owned.get("scope"), owned.get("done")
        if scope is None or done is None:
            return
        scope.cancel()
        with trio.move_on_after(30):
            await done.wait()
        app.extensions.pop(RUNTIME_KEY, None)


def _install_errors(app: QuartTrio) -> None:
    @app.errorhandler(Problem)
    async def on_problem(problem: Problem) -> Response:
        return problem_response(problem)

    @app.errorhandler(HTTPException)
    async def on_http(exc: HTTPException) -> Response:
        status = exc.code or 500
        problem = Problem(status, exc.description or exc.name)
        if status == 413:
            problem.detail = f"The body is larger than {MAX_BODY} bytes."
        return problem_response(problem)

    @app.errorhandler(Exception)
    async def on_crash(exc: Exception) -> Response:
        log.error("unexpected error answering %s %s", request.method, request.path, exc_info=exc)
        return problem_response(
            Problem(500, "The runtime failed to answer; see its log.", code="internal_error")
        )
