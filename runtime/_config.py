"""The device config model and the identities derived from it."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

import attrs
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from ._contract import WIRE_MODEL
from ._errors import InvalidConfig
from ._redact import SecretValues

__all__ = ["DeviceIdentity", "PollInterval", "RuntimeConfig", "validate_config"]


#: A poll interval in seconds: finite and positive.
PollInterval = Annotated[float, Field(gt=0, allow_inf_nan=False)]


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
    #: Seconds between polls; when None, the actor class's ``poll_interval`` applies.
    poll_interval_seconds: PollInterval | None = None

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
