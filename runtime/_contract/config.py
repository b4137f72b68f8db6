"""Configuring the runtime: ``/config``, ``/config/sync``, ``/deconfigure``, ``/discover``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, SecretStr, WithJsonSchema

from .wire import Answer, JsonObject, WireModel

__all__ = [
    "MAX_GENERATION",
    "ConfigAnswer",
    "ConfigMetadata",
    "ConfigSnapshot",
    "DeconfigureAnswer",
    "DeconfigureRequest",
    "DeconfigureTarget",
    "DeviceConfig",
    "DiscoverAnswer",
    "DiscoverRequest",
    "SnapshotRequest",
    "SyncAnswer",
    "SyncMetadata",
    "SyncRejection",
]

#: A config inside a snapshot: any value, each one validated on its own, so one bad
#: config is reported and skipped instead of refusing the whole snapshot.
_SnapshotConfig = Annotated[
    Any,
    WithJsonSchema(
        {
            "type": "object",
            "required": ["id"],
            "properties": {"id": {"type": "string", "minLength": 1}},
            "additionalProperties": True,
        }
    ),
]


class DeviceConfig(WireModel):
    """One device config as Core sends it. Vendor fields are the integration's own (see
    ``/ui-config``); the actor class's config model validates them."""

    id: str = Field(min_length=1, description="The config's local id.")
    config_id: str | None = Field(default=None, description="Core's config UUID.")
    device_id: str | None = Field(default=None, description="The stable vendor device id.")
    container_id: str | None = None
    integration_id: str | None = None
    poll_interval_seconds: float | None = None


#: Generations are whole numbers within JSON's exact range (what JavaScript can count to).
MAX_GENERATION = 2**53 - 1


def _generation_or_none(value: Any) -> Any:
    """A saved or mounted snapshot's generation that is a number but cannot be one (a
    boolean, out of range) is left out: a bad number must not shut Core's snapshots out
    (anything else that is not a whole number is malformed, as before)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and not 0 <= value <= MAX_GENERATION:
        return None
    return value


class ConfigSnapshot(WireModel):
    """A snapshot as the runtime reads it from a file (the mounted one, its own copy):
    what it cannot use is left out. ``/config/sync`` takes the stricter ``SnapshotRequest``."""

    schema_version: int | str | None = None
    container_id: str | None = None
    integration_id: str | None = None
    driver_pid: int | str | None = None
    reason: str | None = None
    generation: Annotated[int | None, BeforeValidator(_generation_or_none)] = None
    updated_at: str | None = None
    configs: list[_SnapshotConfig] = Field(default_factory=list)
    deleted_config_ids: list[str] = Field(default_factory=list)
    config_hash: str | None = None
    internal_token: SecretStr | None = None


class SnapshotRequest(ConfigSnapshot):
    """The body of ``/config/sync``: it must say which generation it is (a whole number
    from 0 to 2^53 - 1; not a boolean, not a string) and which configs should run (an
    explicit empty list removes every device). A snapshot lacking either is refused
    with 422 and changes nothing."""

    generation: Annotated[int, Field(strict=True, ge=0, le=MAX_GENERATION)]
    configs: list[_SnapshotConfig]


class ConfigMetadata(Answer):
    action: Literal["added", "restarted", "reconfigured", "unchanged"]
    generation: int | None


class ConfigAnswer(Answer):
    status: Literal["configured"] = "configured"
    config_id: str
    container_id: str | None
    metadata: ConfigMetadata


class SyncRejection(Answer):
    """A config of a snapshot that was not applied, and why."""

    config_id: str | None
    code: str
    message: str
    errors: list[JsonObject]


class SyncMetadata(Answer):
    duration_ms: float
    note: str | None


class SyncAnswer(Answer):
    """What a snapshot did. ``applied`` = added + restarted + reconfigured."""

    status: Literal["synced", "stale_ignored"]
    generation: int | None
    reason: str | None
    container_id: str | None
    applied: list[str]
    added: list[str]
    restarted: list[str]
    reconfigured: list[str]
    removed: list[str]
    unchanged: int
    skipped: list[str | None]
    rejected: list[SyncRejection]
    active_config_ids: list[str]
    metadata: SyncMetadata


class DeconfigureTarget(WireModel):
    id: str | None = None
    config_id: str | None = None


class DeconfigureRequest(WireModel):
    """Every shape in use: ``{config: {id}}``, ``{config: {config_id}}``, ``{config_id}``,
    ``{id}`` (or ``POST /deconfigure/{config_id}``)."""

    config: DeconfigureTarget | None = None
    config_id: str | None = None
    id: str | None = None

    @property
    def target(self) -> str | None:
        nested = self.config
        for value in (
            nested.id if nested else None,
            nested.config_id if nested else None,
            self.config_id,
            self.id,
        ):
            if value:
                return value
        return None


class DeconfigureMetadata(Answer):
    active_config_ids: list[str]


class DeconfigureAnswer(Answer):
    status: Literal["deconfigured"] = "deconfigured"
    config_id: str
    removed: bool
    metadata: DeconfigureMetadata


class DiscoverRequest(WireModel):
    """``{inputs: {...}}``; some callers send the inputs flat at the top level instead."""

    container_id: str | None = None
    driver_pid: int | str | None = None
    inputs: JsonObject | None = None

    @property
    def discovery_inputs(self) -> JsonObject:
        if self.inputs is not None:
            return self.inputs
        return dict(self.model_extra or {})


class DiscoverAnswer(Answer):
    devices: list[JsonObject]
