"""The way to Core: ``CoreClient``, the ``Outbox`` (lanes, retries, the spool) and
their settings, figures and errors. ``open_runtime`` wires them up; use these to deliver
without the rest of the runtime, or to tune delivery (``OutboxSettings``)."""

from ._core import CoreClient
from ._errors import (
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
    SpoolBusy,
    SpoolCorrupt,
    SpoolError,
    SpoolFull,
    SpoolIOError,
)
from ._outbox import (
    LinkStatus,
    Outbox,
    OutboxSettings,
    OutboxStats,
    open_outbox,
)
from ._recovery import Recovery

__all__ = [
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
    "LinkStatus",
    "Outbox",
    "OutboxSettings",
    "OutboxStats",
    "Recovery",
    "SpoolBusy",
    "SpoolCorrupt",
    "SpoolError",
    "SpoolFull",
    "SpoolIOError",
    "open_outbox",
]
