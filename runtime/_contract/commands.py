"""Device commands: ``POST /command``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .wire import Answer, JsonObject, WireModel, omitted_when_none

__all__ = ["CommandOutcome", "CommandReply", "CommandRequest", "CommandTarget"]

#: What became of a command: ``succeeded`` (the handler returned), ``failed`` (the
#: handler ran and the device refused or failed it), ``not_run`` (refused before the
#: handler started: nothing reached the device) or ``unknown`` (cut short after it may
#: have reached the device: a timeout, a lost connection, the actor stopping).
CommandOutcome = Literal["succeeded", "failed", "not_run", "unknown"]


class CommandTarget(WireModel):
    """The device a command is for. A gateway's child is named by its ``device_id``
    (alone when no other config has a device or child of that id, else with the
    gateway's ``config_id``), or by its entity id ``<config_id>:<device_id>``."""

    config_id: str | None = None
    device_id: str | None = None
    entity_id: str | None = None


class CommandRequest(WireModel):
    """The newest body (``contract_version``, ``target``, ``params``, ``capability``) and
    the older one (``args``, ids at the top level)."""

    command: str = Field(min_length=1)
    contract_version: str | None = None
    target: CommandTarget | None = None
    params: JsonObject | None = None
    args: JsonObject | None = None
    capability: str | None = None
    capability_requirements: list[str] | None = None
    config_id: str | None = None
    device_id: str | None = None
    entity_id: str | None = None
    idempotency_key: str | None = None
    command_id: str | None = None
    correlation_id: str | None = None

    @property
    def arguments(self) -> dict[str, Any]:
        return dict(self.params if self.params is not None else self.args or {})

    @property
    def wanted_capabilities(self) -> tuple[str, ...]:
        wanted = [self.capability] if self.capability else []
        wanted += [c for c in self.capability_requirements or () if c and c not in wanted]
        return tuple(wanted)

    @property
    def target_config_id(self) -> str | None:
        return (self.target.config_id if self.target else None) or self.config_id

    @property
    def target_device_id(self) -> str | None:
        return (self.target.device_id if self.target else None) or self.device_id

    @property
    def target_entity_id(self) -> str | None:
        return (self.target.entity_id if self.target else None) or self.entity_id


class CommandReply(Answer):
    """What became of a command (``outcome``), and whether sending it again is safe and
    may help (``retryable``)."""

    ok: bool
    status: Literal["success", "failed"]
    outcome: CommandOutcome = Field(
        description="succeeded; failed (the device refused or failed it); not_run (refused "
        "before it started: nothing reached the device); unknown (cut short after it may "
        "have reached the device: a timeout, a lost connection, the actor stopping)."
    )
    command: str
    result: JsonObject
    error: JsonObject | None
    retryable: bool = Field(
        description="Sending the same command again is safe and may help: it did not run "
        "(busy, restarting), or its outcome is unknown and the command is declared "
        "idempotent. A retryable outcome is not kept under its idempotency key, so a retry "
        "with the same key runs."
    )
    replayed: bool
    may_have_run: bool | None = omitted_when_none(
        description="Only when it did not succeed or fail: true when it may have reached "
        "the device (outcome unknown), false when it certainly did not (not_run)."
    )
