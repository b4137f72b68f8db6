"""What an integration tells Core about itself, and the API's own documentation:
``/ui-config`` (also ``/ui``), ``/contract``, ``/manifest.json``, ``/openapi.json`` (made
by quart-schema from the routes' models) and ``/docs`` (a page that works offline:
quart-schema's own pages load their scripts from a CDN, docs/design.md, quart-schema).

Everything an author does not declare is derived from the actor classes and their config
models; what they declare (``Integration(manifest=..., ui_schema=...)``) wins.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from typing import Any

from quart import Blueprint, Response, current_app
from quart_schema import OpenAPIProvider, hide, validate_response
from werkzeug.routing.rules import Rule

from .._actor import DeviceActor
from .._config import secret_fields
from .._contract import (
    PROBLEM_JSON,
    REQUIRED_ROUTES,
    ROUTES,
    ContractDocument,
    Manifest,
    ProblemDocument,
    UiConfigAnswer,
    build,
)
from .._integration import Integration
from .._redact import is_secret_key
from .._runtime import Runtime
from .context import RUNTIME_KEY, current_integration

__all__ = [
    "ContractOpenAPI",
    "blueprint",
    "config_form",
    "contract_document",
    "manifest_document",
]

blueprint = Blueprint("describe", __name__)

ActorClass = type[DeviceActor[Any]]

#: Fields the runtime fills from Core: not for a person to type into the form.
_RUNTIME_FIELDS = frozenset({"id", "config_id", "device_id", "container_id", "integration_id"})


@blueprint.get("/ui-config")
@blueprint.get("/ui")
@validate_response(UiConfigAnswer)
async def ui_config() -> UiConfigAnswer:
    """The config form: one JSON Schema per device type, and widget hints."""
    integration = current_integration()
    if integration.ui_schema is not None:
        declared = dict(integration.ui_schema)
        return build(
            UiConfigAnswer,
            form=dict(declared.get("schema") or {}),
            ui_schema=dict(declared.get("uiSchema") or {}),
        )
    return config_form(integration)


@blueprint.get("/contract")
@validate_response(ContractDocument)
async def contract() -> ContractDocument:
    """The route contract: route names and paths, and which ones Core needs."""
    return contract_document(current_integration())


@blueprint.get("/manifest.json")
@validate_response(Manifest)
async def manifest() -> Manifest:
    """The integration's PiPhi manifest."""
    rt = current_app.extensions.get(RUNTIME_KEY)
    port = rt.settings.port if isinstance(rt, Runtime) else None
    return manifest_document(current_integration(), port)


@blueprint.get("/docs")
@hide
async def docs() -> Response:
    """This API, readable offline."""
    document = current_app.extensions["QUART_SCHEMA"].openapi_provider.schema()
    return Response(_docs_page(current_integration(), document), content_type="text/html")


# -- what is derived -----------------------------------------------------------------------


def contract_document(integration: Integration) -> ContractDocument:
    return ContractDocument(
        integration_id=integration.id,
        name=integration.name,
        version=integration.version,
        kind=integration.kind,
        preset=integration.preset,
        domain=integration.domain,
        endpoints=dict(ROUTES),
        required=list(REQUIRED_ROUTES),
    )


def manifest_document(integration: Integration, port: int | None = None) -> Manifest:
    """The derived manifest, with the author's ``manifest`` entries laid over it (their
    ``capabilities`` and ``commands`` merged into the derived ones)."""
    container_port = port or 8000
    document: dict[str, Any] = {
        "manifest_version": 1,
        "id": integration.id,
        "name": integration.name,
        "version": integration.version,
        "description": integration.description or integration.name,
        "runtime": {
            "linux": {
                "type": "container",
                "container": {
                    "image": f"{integration.id}:{integration.version}",
                    "ports": [{"container": container_port, "host": container_port}],
                },
            }
        },
        "api": {"required": list(REQUIRED_ROUTES), "endpoints": dict(ROUTES)},
        "config": {"source": "core", "endpoint": ROUTES["config"], "required": ["id"]},
        "capabilities": _capabilities(integration.actor_classes),
        "commands": _commands(integration.actor_classes),
        "entities": [],
        "onboarding": {"mode": "discovery" if integration.discover else "manual"},
    }
    for key, value in (integration.manifest or {}).items():
        if key in ("capabilities", "commands") and isinstance(value, Mapping):
            document[key] = {**document[key], **value}
        else:
            document[key] = value
    return Manifest.model_validate(document)


def _capabilities(classes: Sequence[ActorClass]) -> dict[str, Any]:
    """What the classes declare (``capabilities``), and every command as an action."""
    found: dict[str, Any] = {}
    for cls in classes:
        for name, capability in cls.capabilities.items():
            found.setdefault(name, capability.to_dict())
        for spec in cls.commands.values():
            found.setdefault(spec.name, {"kind": "action"})
    return found


def _commands(classes: Sequence[ActorClass]) -> dict[str, Any]:
    commands: dict[str, Any] = {}
    for cls in classes:
        for spec in cls.commands.values():
            timeout = spec.timeout if spec.timeout is not None else cls.command_timeout
            commands.setdefault(
                spec.name,
                {
                    "description": spec.description or spec.name.replace("_", " "),
                    "timeout_ms": int(timeout * 1000),
                },
            )
    return commands


def config_form(integration: Integration) -> UiConfigAnswer:
    """The config form from the config models; secret fields become password widgets.

    One device type: its model's fields. Several, chosen by ``select_field``: that field
    is an enum and each type is one ``oneOf`` branch holding its own fields and
    ``required`` list, told apart by a ``const`` (which JSON Schema form renderers such
    as svelte-jsonschema-form turn into a type picker and one form per type).
    """
    choices = dict(integration.actors)
    ui: dict[str, Any] = {}
    definitions: dict[str, Any] = {}
    if not choices:
        classes = integration.actor_classes
        form = _class_form(classes[0], ui, definitions)
        form["title"] = classes[0].config_model.__name__
    else:
        field = integration.select_field
        form = {
            "type": "object",
            "title": integration.name,
            "properties": {field: {"type": "string", "title": _title(field), "enum": [*choices]}},
            "required": [field],
            "oneOf": [],
        }
        for key, cls in choices.items():
            branch = _class_form(cls, ui, definitions)
            branch["title"] = key
            branch["properties"] = {field: {"const": key}, **branch["properties"]}
            branch["required"] = [field, *branch["required"]]
            form["oneOf"].append(branch)
    if definitions:
        form["$defs"] = definitions
    return build(UiConfigAnswer, form=form, ui_schema=ui)


def _class_form(cls: ActorClass, ui: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    model = cls.config_model
    schema = model.model_json_schema(mode="validation")
    definitions.update(schema.get("$defs", {}))  # nested models are referenced
    secret = set(secret_fields(model))
    properties: dict[str, Any] = {}
    for name, prop in schema.get("properties", {}).items():
        if name in _RUNTIME_FIELDS:
            continue
        properties[name] = prop
        if is_secret_key(name) or name in secret:
            ui[name] = {"ui:widget": "password"}
            prop["writeOnly"] = True
            prop.pop("default", None)
    required = [n for n in schema.get("required", ()) if n in properties]
    return {"type": "object", "properties": properties, "required": required}


def _title(name: str) -> str:
    return name.replace("_", " ").capitalize()


# -- the OpenAPI document --------------------------------------------------------------------


class ContractOpenAPI(OpenAPIProvider):
    """quart-schema's document plus what every route shares: problem+json errors (any
    status) and the integration token's security scheme (``/health`` is open; in adopted
    mode the token is optional everywhere)."""

    def build_paths(self, rule: Rule) -> tuple[dict[str, Any], dict[str, Any]]:
        paths, components = super().build_paths(rule)
        problem = {
            "description": "A problem (RFC 9457): every 4xx and 5xx.",
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for operations in paths.values():
            for operation in operations.values():
                responses = {str(k): v for k, v in operation["responses"].items()}
                operation["responses"] = {**responses, "default": problem}
                if rule.rule == ROUTES["health"]:  # open, like /openapi.json and /docs
                    operation["security"] = []
        return paths, components

    def schema(self) -> dict[str, Any]:
        document = super().schema()
        rt = self._app.extensions.get(RUNTIME_KEY)
        if isinstance(rt, Runtime) and not rt.managed:
            document["security"] = [{}, *document.get("security", [])]  # adopted: optional
        schemas = document["components"]["schemas"]
        problem = ProblemDocument.model_json_schema(
            ref_template="#/components/schemas/{model}", mode="serialization"
        )
        schemas.update(problem.pop("$defs", {}))
        schemas["Problem"] = problem
        return document


def _docs_page(integration: Integration, document: Mapping[str, Any]) -> str:
    rows = []
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            rows.append(
                f"<tr><td><code>{method.upper()}</code></td><td><code>{html.escape(path)}"
                f"</code></td><td>{html.escape(operation.get('summary', ''))}</td></tr>"
            )
    schemas = html.escape(json.dumps(document["components"]["schemas"], indent=2))
    title = html.escape(f"{integration.name} {integration.version}")
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{title} API</title></head><body>"
        f"<h1>{title}</h1><p>Machine-readable: <a href='/openapi.json'>/openapi.json</a></p>"
        f"<table border='1' cellpadding='4'>{''.join(rows)}</table>"
        f"<h2>Schemas</h2><pre>{schemas}</pre></body></html>"
    )
