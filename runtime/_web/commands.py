"""``POST /command``: find the target device, check what it declares, run the command
through the actor's mailbox, and keep the outcome under its idempotency key.

A capability is something a device declares: its actor's entities' ``capabilities``, its
class's ``capabilities``, the manifest's, and each command itself, also namespaced
(``device.<command>``, ``<domain>.<command>``). A request naming capabilities is refused
only when the author declared some for the target and the ones asked for are not among
them (or its commands); an integration that declares none is never refused on them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import trio
from pydantic import ValidationError
from quart import Blueprint, request
from quart_schema import validate_request, validate_response

from .._actor import CommandContext
from .._contract import IDEMPOTENCY_HEADER, CommandOutcome, CommandReply, CommandRequest, iso
from .._errors import ActorCallError, CallFailed, UnknownCommand
from .._ledger import LedgerEntry
from .._redact import redact
from .._registry import DeviceSlice
from .._runtime import Runtime
from .context import current_integration, current_runtime
from .devices import device_entities
from .problem import Problem

__all__ = ["blueprint", "command_fingerprint", "declared_capabilities"]

blueprint = Blueprint("commands", __name__)


@blueprint.post("/command")
@validate_request(CommandRequest)
@validate_response(CommandReply, 200)
@validate_response(CommandReply, 502)
async def command(data: CommandRequest) -> tuple[CommandReply, int]:
    """Run a device command. A repeated ``X-PiPhi-Idempotency-Key`` replays the stored
    outcome and never runs the command twice."""
    rt = current_runtime()
    device, target = _target(rt, data)
    _check_capabilities(device, data)
    key = request.headers.get(IDEMPOTENCY_HEADER) or data.idempotency_key
    # Not cancelled with the request (the client left, the server is draining): cut short,
    # a command the device may have run would stay "started" in the ledger, and its retry
    # would get 409 outcome_unknown although it completed. Bounded all the same: the
    # supervisor waits at most the command's own timeout plus a second for the actor's
    # reply, and the ledger's writes are single-row transactions.
    with trio.CancelScope(shield=True):
        answer = await _run_recorded(rt, device, data, key, target)
    return answer  # noqa: RET504 - returned outside: a cancel scope's exit may swallow


async def _run_recorded(
    rt: Runtime, device: DeviceSlice, data: CommandRequest, key: str | None, target: str
) -> tuple[CommandReply, int]:
    """Run the command once per idempotency key, keeping its outcome under the key."""
    child = target if target != device.identity.device_id else None
    if key:
        fingerprint = command_fingerprint(
            data.command, device.identity.id, data.arguments, device_id=child
        )
        known = await rt.ledger.begin(key, fingerprint)
        if known is not None:
            return _replay(known, fingerprint, data.command)
    context = CommandContext(
        command=data.command,
        config_id=device.identity.config_id,
        device_id=target,
        entity_id=data.target_entity_id or f"{device.identity.config_id}:{target}",
        idempotency_key=key,
        correlation_id=data.correlation_id or data.command_id,
        parent_device_id=device.identity.device_id if child else None,
    )
    status, reply = await _run(device, data, context)
    if key:
        if reply.outcome == "not_run" or reply.retryable:
            # It did not run, or running it twice is harmless: a retry with this key runs it.
            await rt.ledger.forget(key)
        else:
            await rt.ledger.finish(key, status, reply.model_dump(mode="json"))
    return reply, status


def command_fingerprint(
    command: str, config_id: str, arguments: Mapping[str, Any], *, device_id: str | None = None
) -> str:
    """What an idempotency key promises to mean: this command, this device (a gateway's
    child, when ``device_id`` names one), these args."""
    target: list[Any] = [command, config_id, arguments]
    if device_id is not None:  # the actor's own device keeps the fingerprint it always had
        target.append(device_id)
    canonical = json.dumps(target, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def declared_capabilities(device: DeviceSlice) -> tuple[frozenset[str], frozenset[str]]:
    """``(declared, accepted)``: what the author declared for ``device`` (its actor's own
    entities, its class's ``capabilities``, the manifest's), and every name a command may
    ask for: those plus each command in its plain and namespaced forms."""
    integration = current_integration()
    actor = device.supervisor.actor
    cls = type(actor)
    declared: set[str] = set(cls.capabilities)
    declared.update((integration.manifest or {}).get("capabilities") or ())
    namespaces = {"device", integration.domain}
    for entity in device_entities(device):
        if device.entities:  # the actor's own entities, not the runtime's default one
            declared.update(entity.capabilities)
        namespaces.update(n for n in (entity.device_type, entity.device_class) if n)
    accepted = set(declared)
    for name in cls.commands:
        accepted.add(name)
        accepted.update(f"{space}.{name}" for space in namespaces)
    return frozenset(declared), frozenset(accepted)


def _check_capabilities(device: DeviceSlice, data: CommandRequest) -> None:
    wanted = data.wanted_capabilities
    if not wanted:
        return
    declared, accepted = declared_capabilities(device)
    missing = [c for c in wanted if c not in accepted]
    if declared and missing:
        raise Problem(
            400,
            f"{device.identity.config_id} does not declare capability {missing[0]!r}.",
            code="unsupported_capability",
            hint="Ask for one of the device's capabilities (GET /entities lists them).",
            extra={
                "ok": False,
                "error": "unsupported_capability",
                "message": f"not declared: {missing}",
            },
        )


def _target(rt: Runtime, data: CommandRequest) -> tuple[DeviceSlice, str]:
    """The device whose actor runs the command, and the device id it is for: the actor's
    own, or one of its children's (a gateway's child is commanded through its actor)."""
    config_id, device_id = data.target_config_id, data.target_device_id
    entity_id = data.target_entity_id
    if entity_id and not (config_id or device_id):
        config_id, _, entity_device = entity_id.partition(":")
        entity_device = entity_device.partition(":")[0]  # <config>:<device>[:<key>]
        device_id = device_id or entity_device or None
    if config_id:
        found = rt.registry.select(lambda i: config_id in (i.config_id, i.id))
    elif device_id:
        found = rt.registry.select(lambda i: i.device_id == device_id)
        found += rt.registry.with_child(device_id)
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
    if data.command not in cls.commands:
        raise Problem(
            400,
            f"{cls.__name__} has no command {data.command!r}.",
            code="unsupported_command",
            extra={
                "ok": False,
                "error": "unsupported_command",
                "message": f"supported: {sorted(cls.commands)}",
            },
        )
    # With the config named, any device id goes to its actor: a child that has not
    # reported since the runtime started (a sleeping sensor) is still its to command.
    return device, device_id or device.identity.device_id


async def _run(
    device: DeviceSlice, data: CommandRequest, context: CommandContext
) -> tuple[int, CommandReply]:
    spec = type(device.supervisor.actor).commands.get(data.command)
    idempotent = spec is not None and spec.idempotent
    try:
        result = await device.supervisor.command(data.command, data.arguments, context=context)
    except UnknownCommand as exc:
        return 400, _reply(data.command, None, exc, "not_run", retryable=False)
    except ActorCallError as exc:
        outcome = _outcome(exc)
        # Ran, or may have: again only if running twice is harmless (and it may help).
        retryable = exc.retryable if outcome == "not_run" else outcome == "unknown" and idempotent
        return 502, _reply(data.command, None, exc, outcome, retryable=retryable)
    return 200, _reply(data.command, result, None, "succeeded", retryable=False)


def _outcome(error: ActorCallError) -> CommandOutcome:
    """What a failed call tells about the device: a call that never started did nothing;
    one cut short once started (timeout, interruption), or whose handler lost its
    connection mid-exchange, may have reached the device; any other handler error is the
    device refusing or failing it."""
    if isinstance(error, CallFailed):
        return "unknown" if error.details.get("may_have_run") else "failed"
    return "unknown" if error.details.get("started") else "not_run"


def _reply(
    command: str,
    result: Any,
    error: ActorCallError | None,
    outcome: CommandOutcome,
    *,
    retryable: bool,
) -> CommandReply:
    body = result if isinstance(result, Mapping) else {"value": result}
    return CommandReply(
        ok=error is None,
        status="success" if error is None else "failed",
        outcome=outcome,
        command=command,
        result=redact(json.loads(json.dumps(body, default=str))) if error is None else {},
        error=None if error is None else redact(error.to_dict()),
        retryable=retryable,
        replayed=False,
        may_have_run={"unknown": True, "not_run": False}.get(outcome),
    )


def _replay(known: LedgerEntry, fingerprint: str, command: str) -> tuple[CommandReply, int]:
    if known.fingerprint != fingerprint:
        raise Problem(
            422,
            "This idempotency key was used for a different command.",
            code="idempotency_key_reused",
            hint=f"Use a new {IDEMPOTENCY_HEADER} for a new command.",
        )
    if known.state == "done" and known.reply is not None:
        stored = {"outcome": _recorded_outcome(known.reply), **known.reply, "replayed": True}
        try:
            reply = CommandReply.model_validate(stored)
        except ValidationError:  # recorded by an older version: answer it as it was
            reply = CommandReply.model_construct(**stored)
        return reply, known.status or 200
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
            "outcome": "unknown",
            "may_have_run": True,
            "retryable": False,
            "replayed": True,
            "started_at": iso(known.started),
        },
    )


def _recorded_outcome(reply: Mapping[str, Any]) -> CommandOutcome:
    """The outcome of a reply recorded before replies said it."""
    if reply.get("ok"):
        return "succeeded"
    return "unknown" if reply.get("may_have_run") else "failed"
