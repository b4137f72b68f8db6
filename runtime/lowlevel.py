"""The runtime's machinery, for those who assemble it themselves or look inside:
supervisors and their nursery, config sync, the registry, rehydration, the runtime's
lifetime (``open_runtime``), the shared sources (``open_sources``), the web app
(``build_app``) and ``serve``, and the errors a call into an actor raises. Integration
authors need none of it (see ``runtime``)."""

from ._actor import CommandSpec
from ._errors import (
    ActorBusy,
    ActorCallError,
    ActorCrashed,
    ActorNotAttached,
    ActorNotReady,
    ActorStopped,
    CallFailed,
    CallTimeout,
    IllegalTransition,
    PollTimeout,
    RefreshUnsupported,
    TeardownTimeout,
    UnknownCommand,
)
from ._health import ErrorRecord
from ._lifecycle import can_transition
from ._nursery import (
    ActorNursery,
    open_actor_nursery,
)
from ._process import MemoryMonitor
from ._reconciler import (
    ApplyResult,
    ConfigSnapshot,
    ConfigSync,
    Rejection,
    RemoveResult,
    SyncResult,
    select_by_field,
)
from ._registry import (
    DeviceSlice,
    Registry,
)
from ._rehydrate import (
    LocalCopy,
    RehydrationReport,
    SourceReport,
    rehydrate,
)
from ._runtime import (
    Runtime,
    open_runtime,
)
from ._serve import serve
from ._settings import Settings, mounted_snapshot_path, state_dir
from ._sink import (
    EventRecord,
    Sink,
    TelemetryRecord,
)
from ._sources import (
    Source,
    SourceHub,
    SourceInbox,
    open_sources,
)
from ._supervisor import (
    Refresh,
    Supervisor,
)
from ._web import build_app

__all__ = [
    "ActorBusy",
    "ActorCallError",
    "ActorCrashed",
    "ActorNotAttached",
    "ActorNotReady",
    "ActorNursery",
    "ActorStopped",
    "ApplyResult",
    "CallFailed",
    "CallTimeout",
    "CommandSpec",
    "ConfigSnapshot",
    "ConfigSync",
    "DeviceSlice",
    "ErrorRecord",
    "EventRecord",
    "IllegalTransition",
    "LocalCopy",
    "MemoryMonitor",
    "PollTimeout",
    "Refresh",
    "RefreshUnsupported",
    "Registry",
    "RehydrationReport",
    "Rejection",
    "RemoveResult",
    "Runtime",
    "Settings",
    "Sink",
    "Source",
    "SourceHub",
    "SourceInbox",
    "SourceReport",
    "Supervisor",
    "SyncResult",
    "TeardownTimeout",
    "TelemetryRecord",
    "UnknownCommand",
    "build_app",
    "can_transition",
    "mounted_snapshot_path",
    "open_actor_nursery",
    "open_runtime",
    "open_sources",
    "rehydrate",
    "select_by_field",
    "serve",
    "state_dir",
]
