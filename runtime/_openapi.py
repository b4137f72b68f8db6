"""The OpenAPI document of the route contract, and a docs page that works offline.

Built from the same models the routes validate with, so it cannot drift from them; the
page is plain HTML rendered here (quart-schema's pages load their scripts from a CDN,
STACK.md section 5, and are blank on an offline device).
"""

from __future__ import annotations

import html
import json
from typing import TYPE_CHECKING, Any

from ._reconciler import ConfigSnapshot

if TYPE_CHECKING:
    from ._integration import Integration

__all__ = ["docs_page", "openapi_document"]

_PROBLEM = {"$ref": "#/components/schemas/Problem"}
_OBJECT: dict[str, Any] = {"type": "object"}


def _op(summary: str, body: dict[str, Any] | None = None, **params: str) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            "200": {"description": "OK", "content": {"application/json": {"schema": _OBJECT}}},
            "default": {
                "description": "A problem (RFC 9457)",
                "content": {"application/problem+json": {"schema": _PROBLEM}},
            },
        },
        "parameters": [
            {
                "name": name,
                "in": "query",
                "required": False,
                "schema": {"type": "string"},
                "description": text,
            }
            for name, text in params.items()
        ],
    }
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


def openapi_document(integration: Integration) -> dict[str, Any]:
    from ._routes import CommandRequest

    schemas: dict[str, Any] = {
        "Problem": {
            "type": "object",
            "required": ["type", "title", "status", "detail"],
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
                "code": {"type": "string"},
                "hint": {"type": "string"},
                "errors": {"type": "array", "items": _OBJECT},
            },
        },
        "Config": integration.ui_config()["schema"],
        "Snapshot": ConfigSnapshot.model_json_schema(by_alias=False),
        "Command": CommandRequest.model_json_schema(by_alias=False),
        "Deconfigure": {
            "type": "object",
            "properties": {
                "config_id": {"type": "string"},
                "configId": {"type": "string"},
                "config": {
                    "type": "object",
                    "properties": {"id": {"type": "string"}, "config_id": {"type": "string"}},
                },
            },
        },
    }
    # Nested models come with local "$defs"; OpenAPI resolves "$ref" from the document
    # root, so they move to components and every reference is rewritten to point there.
    for name in list(schemas):
        schemas[name] = dict(schemas[name])
        for defname, definition in schemas[name].pop("$defs", {}).items():
            schemas.setdefault(defname, definition)
    schemas = _rewrite_refs(schemas)
    ref = {name: {"$ref": f"#/components/schemas/{name}"} for name in schemas}
    sync = _op("Apply a config snapshot", ref["Snapshot"])
    discover = _op("Discover devices", _OBJECT)
    paths: dict[str, Any] = {
        "/health": {"get": _op("Liveness and a summary")},
        "/diagnostics": {
            "get": _op(
                "The runtime's figures and a page of actors' health (by config id)",
                state="only actors in this state",
                device_id="only this device",
                offset="skip this many matching actors (default 0)",
                limit="at most this many actor records (1 to 1000, default 100)",
            )
        },
        "/discover": {"get": _op("Discover devices"), "post": discover},
        "/discovery": {"get": _op("Discover devices"), "post": discover},
        "/config": {"post": _op("Apply one config", ref["Config"])},
        "/config/sync": {"post": sync},
        "/configs/sync": {"post": sync},
        "/deconfigure": {"post": _op("Remove one config", ref["Deconfigure"])},
        "/deconfigure/{config_id}": {
            "post": {
                **_op("Remove one config"),
                "parameters": [
                    {
                        "name": "config_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
            }
        },
        "/events": {"get": _op("Recent local events")},
        "/state": {
            "get": _op(
                "Latest state per device",
                refresh="true to read every device first",
                refresh_request_id="required with refresh=true",
                config_id="only this device",
            )
        },
        "/entities": {"get": _op("Entities, capabilities and commands")},
        "/ui-config": {"get": _op("The config form")},
        "/ui": {"get": _op("The config form")},
        "/contract": {"get": _op("Route contract")},
        "/manifest.json": {"get": _op("Integration manifest")},
        "/command": {"post": _op("Run a device command", ref["Command"])},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": integration.name, "version": integration.version},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def _rewrite_refs(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: (
                v.replace("#/$defs/", "#/components/schemas/")
                if k == "$ref" and isinstance(v, str)
                else _rewrite_refs(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_rewrite_refs(v) for v in value]
    return value


def docs_page(integration: Integration) -> str:
    document = openapi_document(integration)
    rows = []
    for path, methods in document["paths"].items():
        for method, op in methods.items():
            rows.append(
                f"<tr><td><code>{method.upper()}</code></td><td><code>{html.escape(path)}"
                f"</code></td><td>{html.escape(op['summary'])}</td></tr>"
            )
    schemas = html.escape(json.dumps(document["components"]["schemas"], indent=2))
    title = html.escape(f"{integration.name} {integration.version}")
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{title} API</title></head><body>"
        f"<h1>{title}</h1><p>Machine-readable: <a href='/openapi.json'>/openapi.json</a></p>"
        f"<table border='1' cellpadding='4'>{''.join(rows)}</table>"
        f"<h2>Schemas</h2><pre>{schemas}</pre></body></html>"
    )
