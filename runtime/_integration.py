"""An integration's declaration: who it is and which actor classes run its devices.

``Integration`` is the one object an integration module exports; it is pure data. The
web layer (``runtime._web``) serves the PiPhi routes from it, deriving what an author
does not declare (entities, the config form, the contract, the manifest) from the actor
classes and their config models.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from ._actor import DeviceActor
from ._reconciler import select_by_field

if TYPE_CHECKING:
    from quart_trio import QuartTrio

    from ._sources import Source

__all__ = ["Integration"]

ActorClass = type[DeviceActor[Any]]
Discover = Callable[[Mapping[str, Any]], Awaitable[Sequence[Mapping[str, Any]]]]


def _check_actors(inst: Integration, _: attrs.Attribute[Any], value: Any) -> None:
    classes = inst.actor_classes
    if not classes:
        raise TypeError("Integration needs actor=<DeviceActor subclass> or actors={...}")
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, DeviceActor)):
            raise TypeError(f"{cls!r} is not a DeviceActor subclass")


def _source_tuple(sources: Iterable[Source]) -> tuple[Source, ...]:
    return tuple(sources)


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
    sources: Sequence[Source] = attrs.field(default=(), converter=_source_tuple)
    """Shared sources (``MqttSource(...)``): one connection each for the runtime's
    lifetime, routed to the actors that read ``self.source_packets(...)``."""

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

    def app(self, *, exit_on_failure: bool = False) -> QuartTrio:
        """The Quart-Trio app serving this integration (``build_app``):
        ``hypercorn --worker-class trio module:app``. ``exit_on_failure``: under
        hypercorn's CLI, end the process if the runtime dies (see ``build_app``)."""
        from ._web import build_app

        return build_app(self, exit_on_failure=exit_on_failure)

    def describe(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name, "version": self.version}
