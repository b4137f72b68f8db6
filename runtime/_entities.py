"""``entity()``: an actor states one of its entities in a line or two.

What ``DeviceActor.entities()`` returns is a list of mappings in the contract's entity
shape (docs/contract.md, ``/entities``). Anything left out is filled in when ``/entities``
answers: ``config_id``, ``device_id`` (the actor's own device unless a child's is given),
``device_type``, ``entity_type`` ("device"), and ``id`` (``<config_id>:<device_id>``, with
``:<key>`` after it when the device declares several entities).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

__all__ = ["entity"]

_NOT_KEY = re.compile(r"[^a-z0-9]+")


def entity(
    name: str,
    *,
    capabilities: Iterable[str] = (),
    commands: Iterable[str] = (),
    widget: str | None = None,
    device_class: str | None = None,
    device_id: str | None = None,
    key: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One entity: ``entity("Switch", capabilities=["switch_on"], commands=["turn_on",
    "turn_off"], widget="toggle")``.

    ``capabilities`` are what it shows or does (commands are added to them);
    ``commands`` the actor's ``@command`` names Core may send it; ``widget`` the
    dashboard's default (and only allowed) widget; ``device_id`` a gateway child's id for
    a child's entity; ``key`` tells several entities of one device apart in their ids
    (default: from the name). ``extra`` keys go into the entity as they are (``metadata``,
    ``dashboard``, ...)."""
    commands = list(commands)
    body: dict[str, Any] = {
        "name": name,
        "key": key or _NOT_KEY.sub("_", name.lower()).strip("_") or "entity",
        "capabilities": list(dict.fromkeys([*capabilities, *commands])),
        "available_commands": commands,
    }
    if widget is not None:
        body["dashboard"] = {
            "allowed_widgets": [widget],
            "default_widget": widget,
            "recommended_widgets": [widget],
        }
    if device_class is not None:
        body["device_class"] = device_class
    if device_id is not None:
        body["device_id"] = device_id
    body.update(extra)
    return body
