"""piphi-runtime: a supervised, actor-style device runtime for PiPhi integrations.

Write one ``DeviceActor`` subclass per vendor; the runtime gives every configured device
a supervised trio actor that polls on schedule, restarts with backoff after crashes,
reports offline devices once, and serializes commands with polls.
"""

from ._actor import CommandContext, CommandSpec, DeviceActor, command
from ._capability import Capability
from ._children import ChildView
from ._config import MIN_POLL_INTERVAL, DeviceIdentity, PollInterval, RuntimeConfig
from ._core import CoreClient
from ._errors import (
    ActorBusy,
    ActorCallError,
    ActorCrashed,
    ActorNotAttached,
    ActorNotReady,
    ActorStopped,
    CallFailed,
    CallTimeout,
    CoreAuthRejected,
    CoreError,
    CoreIdentityUnknown,
    CorePayloadTooLarge,
    CoreRejected,
    CoreRouteNotFound,
    CoreServerError,
    CoreTimeout,
    CoreUnavailable,
    CoreUnexpectedResponse,
    DeviceUnavailable,
    IllegalTransition,
    InvalidActor,
    InvalidConfig,
    InvalidEvent,
    InvalidReading,
    PiPhiError,
    PollTimeout,
    ReconfigurationRequired,
    RefreshUnsupported,
    SpoolBusy,
    SpoolCorrupt,
    SpoolError,
    SpoolFull,
    SpoolIOError,
    TeardownTimeout,
    UnknownCommand,
)
from ._health import ActorHealth, ErrorRecord
from ._integration import Integration
from ._lifecycle import ActorState, can_transition
from ._limits import MAX_PAYLOAD_BYTES
from ._nursery import ActorNursery, open_actor_nursery
from ._outbox import LinkStatus, Outbox, OutboxSettings, OutboxStats, open_outbox
from ._policy import RestartPolicy
from ._process import MemoryMonitor
from ._reading import Reading
from ._reconciler import (
    ApplyResult,
    ConfigSnapshot,
    ConfigSync,
    Rejection,
    RemoveResult,
    SyncResult,
    select_by_field,
)
from ._recovery import Recovery
from ._registry import DeviceSlice, Registry
from ._rehydrate import LocalCopy, RehydrationReport, SourceReport, mounted_snapshot_path, rehydrate
from ._runtime import Runtime, open_runtime
from ._sink import EventRecord, Severity, Sink, TelemetryRecord
from ._state import state_dir
from ._supervisor import Refresh, Supervisor

__version__ = "0.1.0"

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "MIN_POLL_INTERVAL",
    "ActorBusy",
    "ActorCallError",
    "ActorCrashed",
    "ActorHealth",
    "ActorNotAttached",
    "ActorNotReady",
    "ActorNursery",
    "ActorState",
    "ActorStopped",
    "ApplyResult",
    "CallFailed",
    "CallTimeout",
    "Capability",
    "ChildView",
    "CommandContext",
    "CommandSpec",
    "ConfigSnapshot",
    "ConfigSync",
    "CoreAuthRejected",
    "CoreClient",
    "CoreError",
    "CoreIdentityUnknown",
    "CorePayloadTooLarge",
    "CoreRejected",
    "CoreRouteNotFound",
    "CoreServerError",
    "CoreTimeout",
    "CoreUnavailable",
    "CoreUnexpectedResponse",
    "DeviceActor",
    "DeviceIdentity",
    "DeviceSlice",
    "DeviceUnavailable",
    "ErrorRecord",
    "EventRecord",
    "IllegalTransition",
    "Integration",
    "InvalidActor",
    "InvalidConfig",
    "InvalidEvent",
    "InvalidReading",
    "LinkStatus",
    "LocalCopy",
    "MemoryMonitor",
    "Outbox",
    "OutboxSettings",
    "OutboxStats",
    "PiPhiError",
    "PollInterval",
    "PollTimeout",
    "Reading",
    "ReconfigurationRequired",
    "Recovery",
    "Refresh",
    "RefreshUnsupported",
    "Registry",
    "RehydrationReport",
    "Rejection",
    "RemoveResult",
    "RestartPolicy",
    "Runtime",
    "RuntimeConfig",
    "Severity",
    "Sink",
    "SourceReport",
    "SpoolBusy",
    "SpoolCorrupt",
    "SpoolError",
    "SpoolFull",
    "SpoolIOError",
    "Supervisor",
    "SyncResult",
    "TeardownTimeout",
    "TelemetryRecord",
    "UnknownCommand",
    "__version__",
    "can_transition",
    "command",
    "mounted_snapshot_path",
    "open_actor_nursery",
    "open_outbox",
    "open_runtime",
    "rehydrate",
    "select_by_field",
    "state_dir",
]
