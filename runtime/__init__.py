"""piphi-runtime: a supervised, actor-style device runtime for PiPhi integrations.

Write one ``DeviceActor`` subclass per vendor and declare an ``Integration``; the runtime
gives every configured device a supervised trio actor that polls on schedule, restarts
with backoff after crashes, reports offline devices once, serializes commands with polls,
and serves the PiPhi routes. This namespace is what an integration author uses; tests
use ``runtime.testing``. The machinery lives in ``runtime.lowlevel`` (actors, supervision,
config sync, the runtime's lifetime) and ``runtime.delivery`` (the way to Core), as trio
keeps its own in ``trio.lowlevel``.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the names are; at run time each module is imported on first use
    from ._actor import (
        CommandContext,
        DeviceActor,
        command,
    )
    from ._capability import Capability
    from ._children import ChildView
    from ._config import (
        MIN_POLL_INTERVAL,
        DeviceIdentity,
        PollInterval,
        RuntimeConfig,
    )
    from ._entities import entity
    from ._errors import (
        DeviceUnavailable,
        InvalidActor,
        InvalidConfig,
        InvalidEvent,
        InvalidReading,
        PiPhiError,
        ReconfigurationRequired,
    )
    from ._health import ActorHealth
    from ._integration import Integration
    from ._lifecycle import ActorState
    from ._limits import MAX_PAYLOAD_BYTES
    from ._policy import RestartPolicy
    from ._reading import Reading
    from ._sink import Severity
    from ._sources import MqttSource, SourcePacket

__version__ = "0.1.0"

#: Where each name lives. Imported lazily (PEP 562), so ``import runtime.testing`` (the
#: pytest plugin, loaded in every pytest run of an environment with the runtime installed)
#: and ``python -m runtime`` pay only for what they use.
_WHERE = {
    "CommandContext": "_actor",
    "DeviceActor": "_actor",
    "command": "_actor",
    "entity": "_entities",
    "Capability": "_capability",
    "ChildView": "_children",
    "MIN_POLL_INTERVAL": "_config",
    "DeviceIdentity": "_config",
    "PollInterval": "_config",
    "RuntimeConfig": "_config",
    "DeviceUnavailable": "_errors",
    "InvalidActor": "_errors",
    "InvalidConfig": "_errors",
    "InvalidEvent": "_errors",
    "InvalidReading": "_errors",
    "PiPhiError": "_errors",
    "ReconfigurationRequired": "_errors",
    "ActorHealth": "_health",
    "Integration": "_integration",
    "ActorState": "_lifecycle",
    "MAX_PAYLOAD_BYTES": "_limits",
    "RestartPolicy": "_policy",
    "Reading": "_reading",
    "Severity": "_sink",
    "MqttSource": "_sources",
    "SourcePacket": "_sources",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])


__all__ = [
    "MAX_PAYLOAD_BYTES",
    "MIN_POLL_INTERVAL",
    "ActorHealth",
    "ActorState",
    "Capability",
    "ChildView",
    "CommandContext",
    "DeviceActor",
    "DeviceIdentity",
    "DeviceUnavailable",
    "Integration",
    "InvalidActor",
    "InvalidConfig",
    "InvalidEvent",
    "InvalidReading",
    "MqttSource",
    "PiPhiError",
    "PollInterval",
    "Reading",
    "ReconfigurationRequired",
    "RestartPolicy",
    "RuntimeConfig",
    "Severity",
    "SourcePacket",
    "__version__",
    "command",
    "entity",
]
