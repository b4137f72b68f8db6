"""What an integration tells Core about itself: `/contract`, `/manifest.json`, `/ui-config`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import ConfigDict, Field

from .wire import Answer, JsonObject, omitted_when_none

__all__ = [
    "REQUIRED_ROUTES",
    "ROUTES",
    "ContractDocument",
    "Manifest",
    "ManifestApi",
    "ManifestCapability",
    "ManifestCommand",
    "UiConfigAnswer",
]

#: Route names and paths, as ``/contract`` and the manifest announce them.
ROUTES: Mapping[str, str] = {
    "health": "/health",
    "diagnostics": "/diagnostics",
    "discover": "/discover",
    "entities": "/entities",
    "state": "/state",
    "config": "/config",
    "config_sync": "/config/sync",
    "deconfigure": "/deconfigure",
    "ui_config": "/ui-config",
    "events": "/events",
    "command": "/command",
    "contract": "/contract",
    "manifest": "/manifest.json",
}
#: The routes Core needs.
REQUIRED_ROUTES = ("health", "entities", "command", "config", "ui_config")


class ContractDocument(Answer):
    integration_id: str
    name: str
    version: str
    kind: str = Field(description="The runtime kind, e.g. integration.")
    preset: str = Field(description="The integration's shape, e.g. cloud-polling-api.")
    domain: str = Field(description="Its field, e.g. climate, energy, security.")
    endpoints: dict[str, str]
    required: list[str]


class ManifestCapability(Answer):
    model_config = ConfigDict(extra="allow")

    kind: Literal["sensor", "actuator", "action"]
    unit: str | None = omitted_when_none()


class ManifestCommand(Answer):
    model_config = ConfigDict(extra="allow")

    description: str
    timeout_ms: int


class ManifestApi(Answer):
    model_config = ConfigDict(extra="allow")

    required: list[str]
    endpoints: dict[str, str]


class Manifest(Answer):
    """The PiPhi manifest; an author's ``manifest=`` entries are laid over the derived one."""

    model_config = ConfigDict(extra="allow")

    manifest_version: int
    id: str
    name: str
    version: str
    description: str
    runtime: JsonObject
    api: ManifestApi
    config: JsonObject
    capabilities: dict[str, ManifestCapability]
    commands: dict[str, ManifestCommand]
    entities: list[JsonObject]
    onboarding: JsonObject


class UiConfigAnswer(Answer):
    """The config form: one JSON Schema, with one ``oneOf`` branch per device type when
    the integration has several, and the widget hints."""

    form: JsonObject = Field(serialization_alias="schema")
    ui_schema: JsonObject = Field(serialization_alias="uiSchema")
