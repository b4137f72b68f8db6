"""Device commands: ``POST /command``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .wire import Answer, JsonObject, WireModel, omitted_when_none

__all__ = ["CommandReply", "CommandRequest", "CommandTarget"]


class CommandTarget(WireModel):
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
    """``retryable`` says whether sending the same command again is safe and may help."""

    ok: bool
    status: Literal["success", "failed"]
    command: str
    result: JsonObject
    error: JsonObject | None
    retryable: bool
    replayed: bool
    may_have_run: bool | None = omitted_when_none(
        description="For a timeout: whether it may have reached the device."
    )
