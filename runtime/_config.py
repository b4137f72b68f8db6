"""The device config model and the identities derived from it."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

import attrs
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_core import PydanticCustomError

from ._contract import WIRE_MODEL
from ._errors import InvalidConfig
from ._redact import SecretValues

__all__ = [
    "MIN_POLL_INTERVAL",
    "DeviceIdentity",
    "PollInterval",
    "RuntimeConfig",
    "check_poll_interval",
    "validate_config",
]


#: The shortest poll interval the runtime accepts, in seconds, from a config or an actor
#: class. Every poll costs a wakeup, a timeout watch and a telemetry payload; ten a second
#: per device is already more than any device we know of needs, and intervals far below
#: it (1e-9 s was seen) make one device's polls crowd out every other task.
MIN_POLL_INTERVAL = 0.1


def check_poll_interval(seconds: float) -> float:
    """``seconds`` if it is a usable poll interval; a validation error naming the minimum
    otherwise (NaN included)."""
    if not seconds >= MIN_POLL_INTERVAL:
        raise PydanticCustomError(
            "poll_interval_too_short",
            "a poll interval must be at least {minimum} s, got {seconds}",
            {"minimum": MIN_POLL_INTERVAL, "seconds": seconds},
        )
    return seconds


#: A poll interval in seconds: finite and at least ``MIN_POLL_INTERVAL``.
PollInterval = Annotated[
    float,
    Field(allow_inf_nan=False, json_schema_extra={"minimum": MIN_POLL_INTERVAL}),
    AfterValidator(check_poll_interval),
]


@attrs.frozen(slots=True)
class DeviceIdentity:
    """The PiPhi identities of one configured device, resolved once per actor.

    ``config_id`` and ``device_id`` fall back to the local ``id`` only when Core sent
    none (docs/contract.md, Identities).
    """

    id: str
    config_id: str
    device_id: str
    container_id: str | None
    integration_id: str | None


class RuntimeConfig(BaseModel):
    """One device config as Core sends it. Subclass it per integration with vendor fields.

    Accepts snake_case and camelCase keys; unknown (vendor) keys are kept. Instances are
    immutable: a changed config is a new config, which is how the runtime tells a change.
    """

    model_config = ConfigDict(**WIRE_MODEL, frozen=True)

    id: Annotated[str, Field(min_length=1)]
    config_id: str | None = None
    device_id: str | None = None
    container_id: str | None = None
    integration_id: str | None = None
    #: Seconds between polls, at least ``MIN_POLL_INTERVAL``; when None, the actor
    #: class's ``poll_interval`` applies.
    poll_interval_seconds: PollInterval | None = None

    @field_validator("poll_interval_seconds", mode="after", check_fields=False)
    @classmethod
    def _bounded_interval(cls, seconds: float | None) -> float | None:
        """The minimum holds also where a subclass redeclares the field as a plain float."""
        return None if seconds is None else check_poll_interval(seconds)

    @property
    def identity(self) -> DeviceIdentity:
        return DeviceIdentity(
            id=self.id,
            config_id=self.config_id or self.id,
            device_id=self.device_id or self.id,
            container_id=self.container_id,
            integration_id=self.integration_id,
        )


C = TypeVar("C", bound="RuntimeConfig")


def validate_config(model: type[C], data: Any, secrets: SecretValues | None = None) -> C:
    """Validate ``data`` (a mapping or an existing config) into ``model``.

    Raises InvalidConfig carrying the config id (when readable) and pydantic's field
    errors, so a caller can report exactly which config and field was wrong.
    """
    if isinstance(data, model):
        return data
    if isinstance(data, RuntimeConfig):
        data = data.model_dump(exclude_unset=True)
    elif isinstance(data, Mapping) and secrets is not None:
        # Every config passes here once (a snapshot's unchanged ones are not validated
        # again), including rehydrated ones: remember secrets named by key or in URLs.
        secrets.collect(data)
    try:
        config = model.model_validate(data)
    except ValidationError as exc:
        config_id = data.get("id") if isinstance(data, dict) else None
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        fields = ", ".join(".".join(str(p) for p in e["loc"]) or "(body)" for e in errors)
        raise InvalidConfig(
            f"Config {config_id!r} is not a valid {model.__name__}: {fields}",
            details={"config_id": config_id, "errors": errors},
        ) from exc
    # SecretStr fields are secret whatever they are called: remember their values so no
    # log line can show them (runtime/_redact.py scrubs by value).
    if secrets is not None:
        for name in secret_fields(model):
            secret = getattr(config, name, None)
            if isinstance(secret, SecretStr):
                secrets.add(secret)
    return config


@functools.cache
def secret_fields(model: type[BaseModel]) -> tuple[str, ...]:
    """The model's fields typed ``SecretStr`` (optional or not), whatever their name."""
    return tuple(
        name
        for name, field in model.model_fields.items()
        if field.annotation is SecretStr or SecretStr in getattr(field.annotation, "__args__", ())
    )
