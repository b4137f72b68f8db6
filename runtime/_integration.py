"""An integration's declaration: who it is, its actor classes, and what Core is told.

``Integration`` is the one object an integration module exports; ``integration.app()``
is the Quart-Trio app that serves the whole PiPhi route contract from it. Everything an
author does not declare (entities, the config form, the contract, the manifest) has a
sensible default derived from the actor classes and their config models.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from ._actor import DeviceActor
from ._config import secret_fields
from ._reconciler import select_by_field
from ._redact import is_secret_key, redact_text
from ._registry import DeviceSlice

if TYPE_CHECKING:
    from quart_trio import QuartTrio

__all__ = ["ROUTES", "Integration"]

ActorClass = type[DeviceActor[Any]]
Discover = Callable[[Mapping[str, Any]], Awaitable[Sequence[Mapping[str, Any]]]]

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
REQUIRED_ROUTES = ("health", "entities", "command", "config", "ui_config")

_WIDGETS_BY_TYPE = {
    bool: ("toggle", ["toggle", "status"]),
    int: ("gauge", ["gauge", "value", "chart"]),
    float: ("gauge", ["gauge", "value", "chart"]),
    str: ("value", ["value", "status"]),
}


def _check_actors(inst: Integration, _: attrs.Attribute[Any], value: Any) -> None:
    classes = inst.actor_classes
    if not classes:
        raise TypeError("Integration needs actor=<DeviceActor subclass> or actors={...}")
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, DeviceActor)):
            raise TypeError(f"{cls!r} is not a DeviceActor subclass")


@attrs.frozen(kw_only=True)
class Integration:
    """One PiPhi integration. Give ``actor`` for one device kind, or ``actors`` mapping a
    config field's values (``select_field``, default ``device_type``) to classes, or
    ``actors`` plus your own ``select(config) -> class``."""

    id: str
    name: str
    version: str
    actor: ActorClass | None = attrs.field(default=None, validator=_check_actors)
    actors: Mapping[str, ActorClass] = attrs.field(factory=dict)
    select_field: str = "device_type"
    select: Callable[[Mapping[str, Any]], ActorClass] | None = None
    discover: Discover | None = None
    """``async def discover(inputs) -> [device, ...]`` behind ``/discover``."""
    ui_schema: Mapping[str, Any] | None = None
    """``{schema, uiSchema}`` for ``/ui-config``; default: from the config model."""
    manifest: Mapping[str, Any] | None = None
    kind: str = "integration"
    preset: str = "cloud-polling-api"
    domain: str = "general"
    description: str | None = None

    @property
    def actor_classes(self) -> tuple[ActorClass, ...]:
        classes = list(self.actors.values())
        if self.actor is not None and self.actor not in classes:
            classes.insert(0, self.actor)
        return tuple(classes)

    @property
    def selector(self) -> ActorClass | Callable[[Mapping[str, Any]], ActorClass]:
        """What ``ConfigSync`` uses to pick each config's actor class."""
        if self.select is not None:
            return self.select
        if not self.actors:
            assert self.actor is not None
            return self.actor
        return select_by_field(self.select_field, self.actors, default=self.actor)

    def app(self) -> QuartTrio:
        """The Quart-Trio app: ``hypercorn --worker-class trio module:app``."""
        from ._routes import build_app

        return build_app(self)

    # -- what Core is told --------------------------------------------------------------

    def describe(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name, "version": self.version}

    def contract(self) -> dict[str, Any]:
        return {
            "integration_id": self.id,
            "name": self.name,
            "version": self.version,
            "kind": self.kind,
            "preset": self.preset,
            "domain": self.domain,
            "endpoints": dict(ROUTES),
            "required": list(REQUIRED_ROUTES),
        }

    def ui_config(self) -> dict[str, Any]:
        if self.ui_schema is not None:
            return dict(self.ui_schema)
        return config_form(self.actor_classes)

    def manifest_document(self, port: int | None = None) -> dict[str, Any]:
        if self.manifest is not None:
            return dict(self.manifest)
        commands: dict[str, Any] = {}
        for cls in self.actor_classes:
            for spec in cls.commands.values():
                timeout = spec.timeout if spec.timeout is not None else cls.command_timeout
                commands[spec.name] = {
                    "description": spec.description or spec.name.replace("_", " "),
                    "timeout_ms": int(timeout * 1000),
                }
        container_port = port or 8000
        return {
            "manifest_version": 1,
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "description": self.description or self.name,
            "runtime": {
                "linux": {
                    "type": "container",
                    "container": {
                        "image": f"{self.id}:{self.version}",
                        "ports": [{"container": container_port, "host": container_port}],
                    },
                }
            },
            "api": {"required": list(REQUIRED_ROUTES), "endpoints": dict(ROUTES)},
            "config": {"source": "core", "endpoint": ROUTES["config"], "required": ["id"]},
            "capabilities": {},
            "commands": commands,
            "entities": [],
            "onboarding": {"mode": "discovery" if self.discover else "manual"},
        }


def default_entity(device: DeviceSlice) -> dict[str, Any]:
    """One entity per device: the metrics it reports, its commands as capabilities."""
    identity = device.identity
    metrics = {r.metric: r for r in device.readings}
    cls = type(device.supervisor.actor)
    commands = list(cls.commands.values())
    widgets: list[str] = []
    for reading in metrics.values():
        for widget in _WIDGETS_BY_TYPE.get(type(reading.value), ("value", ["value"]))[1]:
            if widget not in widgets:
                widgets.append(widget)
    first = next(iter(metrics.values()), None)
    default_widget = (
        _WIDGETS_BY_TYPE.get(type(first.value), ("value", []))[0] if first else "status"
    )
    device_type = str(getattr(device.supervisor.actor.config, "device_type", None) or cls.__name__)
    return {
        "id": f"{identity.config_id}:{identity.device_id}",
        "name": redact_text(
            str(getattr(device.supervisor.actor.config, "name", None) or identity.device_id)
        ),
        "capabilities": [*metrics, *(spec.name for spec in commands)],
        "config_id": identity.config_id,
        "device_id": identity.device_id,
        "device_type": device_type,
        "device_class": "actuator" if commands else "sensor",
        "entity_type": "device",
        "available_commands": [
            {
                "id": spec.name,
                "label": spec.description or spec.name.replace("_", " ").capitalize(),
                "kind": "action",
                "args_schema": {"type": "object"},
            }
            for spec in commands
        ],
        "dashboard": {
            "allowed_widgets": widgets or ["status"],
            "default_widget": default_widget,
            "recommended_widgets": (widgets or ["status"])[:2],
        },
        "metadata": {
            "actor": cls.__name__,
            "units": {m: r.unit for m, r in metrics.items() if r.unit},
            "available": device.health.available,
        },
    }


_RUNTIME_FIELDS = {
    "id",
    "config_id",
    "device_id",
    "container_id",
    "integration_id",
}


def config_form(classes: Sequence[ActorClass]) -> dict[str, Any]:
    """A JSON Schema form from the config models; secret fields become password widgets."""
    properties: dict[str, Any] = {}
    required: list[str] = []
    ui: dict[str, Any] = {}
    definitions: dict[str, Any] = {}
    for cls in classes:
        model = cls.config_model
        schema = model.model_json_schema(by_alias=False, mode="validation")
        definitions.update(schema.get("$defs", {}))  # nested models are referenced
        for name, prop in schema.get("properties", {}).items():
            if name in _RUNTIME_FIELDS or name in properties:
                continue
            properties[name] = prop
            if is_secret_key(name) or name in secret_fields(model):
                ui[name] = {"ui:widget": "password"}
                prop["writeOnly"] = True
                prop.pop("default", None)
            if name in schema.get("required", ()) and name not in required:
                required.append(name)
    form: dict[str, Any] = {
        "type": "object",
        "title": classes[0].config_model.__name__ if classes else "Config",
        "properties": properties,
        "required": required,
    }
    if definitions:
        form["$defs"] = definitions
    return {"schema": form, "uiSchema": ui}
