"""Configuring the runtime: ``/config``, ``/config/sync`` (also ``/configs/sync``),
``/deconfigure`` (every body shape, and ``/deconfigure/<id>``), ``/discover``.

A refused request changes nothing: bodies are validated before anything is applied,
and the auth a body carries is adopted only from a request that was accepted.
"""

from __future__ import annotations

import json
from typing import Any

import trio
from quart import Blueprint, request
from quart_schema import document_request, validate_request, validate_response

from .._contract import (
    CONTAINER_HEADER,
    TOKEN_HEADER,
    ConfigAnswer,
    ConfigMetadata,
    DeconfigureAnswer,
    DeconfigureRequest,
    DeviceConfig,
    DiscoverAnswer,
    DiscoverRequest,
    SnapshotRequest,
    SyncAnswer,
    SyncMetadata,
    SyncRejection,
    build,
)
from .._contract.config import DeconfigureMetadata
from .._errors import InvalidConfig, PiPhiError
from .._reconciler import SyncResult
from .._redact import redact
from .._runtime import Runtime
from .context import current_integration, current_runtime
from .problem import Problem

__all__ = ["DISCOVERY_TIMEOUT", "blueprint"]

blueprint = Blueprint("config", __name__)

#: How long ``/discover`` waits for the integration's ``discover()``.
DISCOVERY_TIMEOUT = 30.0


@blueprint.post("/config")
@validate_request(DeviceConfig)
@validate_response(ConfigAnswer)
async def config(data: DeviceConfig) -> ConfigAnswer:
    """Apply one config: start it, restart it if it changed, else nothing."""
    rt = current_runtime()
    raw = await request.get_json()
    try:
        result = await rt.sync.apply_config(raw)
    except InvalidConfig as exc:
        raise Problem.from_error(422, exc) from None
    _learn_body_container(rt, data.container_id)
    return build(
        ConfigAnswer,
        status="configured",
        config_id=result.config_id,
        container_id=rt.client.container_id,
        metadata=build(ConfigMetadata, action=result.action, generation=rt.sync.last_generation),
    )


@blueprint.post("/config/sync")
@blueprint.post("/configs/sync")
@validate_request(SnapshotRequest)
@validate_response(SyncAnswer)
async def config_sync(data: SnapshotRequest) -> SyncAnswer:
    """Converge to Core's snapshot: start, change and stop only what differs."""
    rt = current_runtime()
    # The configs' secrets are remembered as each config is validated; walking all of
    # them here cost ~95 ms at 10,000 configs on every sync, changed or not.
    rt.secrets.collect(data.model_dump(exclude={"configs"}))
    try:
        result = await rt.sync.apply_snapshot(data)
    except InvalidConfig as exc:
        raise Problem.from_error(422, exc) from None
    if result.status == "synced":  # only an applied snapshot speaks for Core
        token = data.internal_token.get_secret_value() if data.internal_token else None
        rt.learn_auth(
            request.headers.get(CONTAINER_HEADER) or data.container_id,
            token or request.headers.get(TOKEN_HEADER),
            from_snapshot=True,
        )
    return _sync_answer(result, rt.client.container_id)


@blueprint.post("/deconfigure")
@blueprint.post("/deconfigure/<path:config_id>")
@document_request(DeconfigureRequest)
@validate_response(DeconfigureAnswer)
async def deconfigure(config_id: str | None = None) -> DeconfigureAnswer:
    """Remove one config, named by Core's config id or the local id."""
    rt = current_runtime()
    if config_id is None:
        config_id = DeconfigureRequest.model_validate(await _optional_body()).target
    if not config_id:
        raise Problem(
            422,
            "Name the config to remove.",
            code="config_id_required",
            hint='Send {"config_id": "..."}, {"config": {"id": "..."}} or POST /deconfigure/<id>.',
        )
    result = await rt.sync.remove(config_id)
    if not result.removed:
        device = rt.registry.get(config_id)  # maybe named by Core's config id
        if device is not None:
            result = await rt.sync.remove(device.identity.id)
    return build(
        DeconfigureAnswer,
        status="deconfigured",
        config_id=config_id,
        removed=result.removed,
        metadata=build(DeconfigureMetadata, active_config_ids=list(rt.sync.active_config_ids)),
    )


@blueprint.route("/discover", methods=["GET", "POST"])
@blueprint.route("/discovery", methods=["GET", "POST"])
@document_request(DiscoverRequest)
@validate_response(DiscoverAnswer)
async def discover() -> DiscoverAnswer:
    """Find devices with the integration's ``discover(inputs)``, then the devices its
    shared sources hear that no config claims; secrets never echoed."""
    rt = current_runtime()  # 503 while the runtime is not up
    raw = await _optional_body() if request.method == "POST" else dict(request.args)
    body = DiscoverRequest.model_validate(raw)
    inputs = body.discovery_inputs
    integration = current_integration()
    devices: list[Any] = []
    if integration.discover is not None:
        try:
            with trio.fail_after(DISCOVERY_TIMEOUT):
                devices = list(await integration.discover(inputs))
        except trio.TooSlowError:
            raise Problem(
                504, f"Discovery did not finish within {DISCOVERY_TIMEOUT:g} s."
            ) from None
        except PiPhiError as exc:
            raise Problem.from_error(502, exc) from None
    devices.extend(rt.sources.discovered())
    return build(DiscoverAnswer, devices=redact(json.loads(json.dumps(devices, default=str))))


async def _optional_body() -> dict[str, Any]:
    """The JSON object of a route whose body may be left out."""
    data = await request.get_data(as_text=False)
    if not data.strip():
        return {}
    body = await request.get_json()
    if not isinstance(body, dict):
        raise Problem(
            422,
            f"The body must be a JSON object, got {type(body).__name__}.",
            code="body_not_an_object",
        )
    return body


def _learn_body_container(rt: Runtime, container_id: str | None) -> None:
    """A body's container id counts only when the header is absent (docs/contract.md)."""
    if container_id and not request.headers.get(CONTAINER_HEADER):
        rt.learn_auth(container_id, None, from_snapshot=False)


def _sync_answer(result: SyncResult, container_id: str | None) -> SyncAnswer:
    return build(
        SyncAnswer,
        status=result.status,
        generation=result.generation,
        reason=result.reason,
        container_id=result.container_id or container_id,
        applied=list(result.applied),
        added=list(result.added),
        restarted=list(result.restarted),
        reconfigured=list(result.reconfigured),
        removed=list(result.removed),
        unchanged=result.unchanged,
        skipped=[r.config_id for r in result.rejected],
        rejected=[
            build(
                SyncRejection,
                config_id=r.config_id,
                code=r.code,
                message=r.message,
                errors=[dict(e) for e in r.errors],
            )
            for r in result.rejected
        ],
        active_config_ids=list(result.active_config_ids),
        metadata=build(SyncMetadata, duration_ms=round(result.duration_ms, 3), note=result.note),
    )
