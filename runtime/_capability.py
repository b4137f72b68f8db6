"""What a device can do, as an actor class declares it for the manifest and its entities."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import attrs

__all__ = ["Capability"]

Kind = Literal["sensor", "actuator", "action"]


@attrs.frozen
class Capability:
    """One capability: ``capabilities = {"power_w": Capability.sensor("W"),
    "switch_on": Capability.actuator()}`` on a ``DeviceActor`` subclass. Commands are
    capabilities of kind ``action`` without being declared here."""

    kind: Kind = attrs.field(validator=attrs.validators.in_(("sensor", "actuator", "action")))
    unit: str | None = None
    dashboard: Mapping[str, Any] | None = None

    @classmethod
    def sensor(cls, unit: str | None = None, **dashboard: Any) -> Capability:
        return cls("sensor", unit, dashboard or None)

    @classmethod
    def actuator(cls, unit: str | None = None, **dashboard: Any) -> Capability:
        return cls("actuator", unit, dashboard or None)

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": self.kind}
        if self.unit is not None:
            body["unit"] = self.unit
        if self.dashboard:
            body["dashboard"] = dict(self.dashboard)
        return body
