"""Every error the runtime raises or records, in one hierarchy.

    PiPhiError                      code + hint; str() shows both, to_dict() for HTTP bodies
    ├── InvalidReading              a Reading, report() or poll() result is malformed (ValueError)
    ├── InvalidEvent                emit_event() got a malformed event (ValueError)
    ├── InvalidConfig               a device config failed validation (ValueError)
    ├── InvalidActor                an actor class is declared wrongly (TypeError)
    ├── ActorNotAttached            an actor's output methods used outside a supervisor
    ├── DeviceUnavailable           raised BY actors: the device is offline or unreachable
    │   └── PollTimeout             a poll or setup overran its timeout (recorded)
    ├── ReconfigurationRequired     raised BY actors: retrying cannot help (credentials, config)
    ├── ActorCrashed                recorded when an actor hook raised an unexpected exception
    ├── TeardownTimeout             teardown overran its grace period (recorded)
    ├── ActorCallError              a command or refresh sent to an actor did not succeed
    │   ├── ActorBusy               the actor's mailbox is full
    │   ├── ActorNotReady           the actor has no live session (restarting after a crash)
    │   ├── ActorStopped            the actor was stopped before it answered
    │   ├── UnknownCommand          the actor declares no such command
    │   ├── RefreshUnsupported      push actors have no on-demand read
    │   ├── CallTimeout             no answer within the call's timeout
    │   └── CallFailed              the command or poll raised; the cause is chained
    ├── IllegalTransition           a supervisor bug: a lifecycle transition not in the table
    ├── CoreError                   a call to PiPhi Core did not succeed; ``retryable`` says
    │   │                           whether the same call may succeed later
    │   ├── CoreUnavailable         connection refused, reset or unresolvable (retryable)
    │   ├── CoreTimeout             Core did not answer in time (retryable)
    │   ├── CoreServerError         5xx, 429 or 408, with Core's Retry-After when given (retryable)
    │   ├── CoreAuthRejected        401/403: not retried until the token changes
    │   ├── CoreRouteNotFound       404: this Core does not serve the route
    │   ├── CoreRejected            another 4xx: Core refused this payload
    │   │   └── CorePayloadTooLarge 413: Core refused this payload for its size
    │   ├── CoreUnexpectedResponse  an answer the runtime cannot read
    │   └── CoreIdentityUnknown     no container id yet, so nothing can be sent
    ├── SourceNotDeclared           an actor asked for source packets; no source is declared
    └── SpoolError                  a state file (spool, ledger) cannot be opened or written
        ├── SpoolFull               disk full (or a file-size limit): SQLITE_FULL, ENOSPC
        ├── SpoolIOError            the disk failed a read or write: SQLITE_IOERR, EIO
        ├── SpoolBusy               another process holds the file: SQLITE_BUSY/LOCKED
        └── SpoolCorrupt            the file is damaged: SQLITE_CORRUPT/NOTADB

Errors carry a stable machine-readable ``code`` and a ``hint`` a person can act on.
Subclasses set defaults as class attributes; an instance may override both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import trio

__all__ = [
    "ActorBusy",
    "ActorCallError",
    "ActorCrashed",
    "ActorNotAttached",
    "ActorNotReady",
    "ActorStopped",
    "CallFailed",
    "CallTimeout",
    "CoreAuthRejected",
    "CoreError",
    "CoreIdentityUnknown",
    "CorePayloadTooLarge",
    "CoreRejected",
    "CoreRouteNotFound",
    "CoreServerError",
    "CoreTimeout",
    "CoreUnavailable",
    "CoreUnexpectedResponse",
    "DeviceUnavailable",
    "IllegalTransition",
    "InvalidActor",
    "InvalidConfig",
    "InvalidEvent",
    "InvalidReading",
    "PiPhiError",
    "PollTimeout",
    "ReconfigurationRequired",
    "RefreshUnsupported",
    "SourceNotDeclared",
    "SpoolBusy",
    "SpoolCorrupt",
    "SpoolError",
    "SpoolFull",
    "SpoolIOError",
    "TeardownTimeout",
    "UnknownCommand",
    "error_code",
    "error_message",
    "errors_beside_cancellation",
]


class PiPhiError(Exception):
    """Base of every runtime error: a message, a stable ``code`` and a recovery ``hint``."""

    code: ClassVar[str] = "piphi_error"
    default_hint: ClassVar[str] = "See the runtime log for details."

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint
        self.details: Mapping[str, Any] = dict(details) if details else {}

    def __str__(self) -> str:
        return f"{self.message} [{self.code}] (hint: {self.hint})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.hint, dict(self.details)))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready body: ``{code, message, hint, **details}``."""
        body: dict[str, Any] = {"code": self.code, "message": self.message, "hint": self.hint}
        body.update(self.details)
        return body


def _rebuild(cls: type[PiPhiError], message: str, hint: str, details: dict[str, Any]) -> PiPhiError:
    err = cls.__new__(cls)
    PiPhiError.__init__(err, message, hint=hint, details=details)
    return err


class InvalidReading(PiPhiError, ValueError):
    code = "invalid_reading"
    default_hint = (
        "A reading needs a non-empty metric name and a bool, int, float or str value; "
        "numbers must be finite. Fix the actor that produced it."
    )


class InvalidEvent(PiPhiError, ValueError):
    code = "invalid_event"
    default_hint = (
        "An event needs a non-empty type, a mapping of data and a severity of "
        "info, warning, error or critical."
    )


class InvalidConfig(PiPhiError, ValueError):
    code = "invalid_config"
    default_hint = "Correct the listed fields in the device config and send it again."


class InvalidActor(PiPhiError, TypeError):
    code = "invalid_actor"
    default_hint = "Fix the DeviceActor subclass as the message says; see the DeviceActor docs."


class ActorNotAttached(PiPhiError, RuntimeError):
    code = "actor_not_attached"
    default_hint = (
        "publish_state(), report() and emit_event() work while the actor runs under a "
        "supervisor; spawn it with open_actor_nursery() (tests: runtime.testing)."
    )


class DeviceUnavailable(PiPhiError):
    """Raise from an actor when its device is offline or unreachable.

    Unlike any other exception, this keeps the actor instance and its session: the
    supervisor marks the actor ``unavailable``, emits one ``device.unavailable`` event
    and retries the same hook with backoff, without teardown. (Raised from ``setup()``,
    where no session exists yet, ``teardown()`` releases what setup opened first.)
    """

    code = "device_unavailable"
    default_hint = (
        "Check that the device is powered and reachable from this host; "
        "the runtime keeps retrying with backoff."
    )


class PollTimeout(DeviceUnavailable):
    code = "poll_timeout"
    default_hint = (
        "The device did not answer in time. Check it is reachable, or raise the actor's "
        "poll_timeout if it is just slow; the runtime keeps retrying with backoff."
    )


class ReconfigurationRequired(PiPhiError):
    """Raise from an actor when retrying cannot help until the device's config changes:
    credentials the device refuses, an address that is not the device, a setting it
    rejects. Home Assistant's ``ConfigEntryAuthFailed`` is the model.

    The supervisor tears the session down, moves the actor to ``needs_reconfiguration``
    and tells Core once (``device.needs_reconfiguration``, severity ``error``, with
    ``hint``). It runs no fast retry loop: it probes (setup again) every
    ``reconfigure_probe_interval`` seconds of the actor class (15 minutes by default),
    and at once when Core sends a changed config.

    ``reason`` is a short stable word for Core and people, such as ``auth_rejected``;
    ``hint`` says what to change.
    """

    code = "reconfiguration_required"
    default_hint = (
        "The device refuses its configuration; correct it (credentials, address) in PiPhi "
        "and send it again. The runtime retries at once on a changed config."
    )

    def __init__(
        self,
        message: str | None = None,
        *,
        reason: str = "configuration_rejected",
        hint: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError(f"ReconfigurationRequired needs a non-empty reason, got {reason!r}")
        super().__init__(
            message or f"the device needs a new configuration ({reason})",
            hint=hint,
            details={**(details or {}), "reason": reason},
        )

    @property
    def reason(self) -> str:
        """A short stable word for why, such as ``auth_rejected``."""
        return str(self.details["reason"])


class ActorCrashed(PiPhiError):
    code = "actor_crashed"
    default_hint = (
        "The actor raised an unexpected exception; the runtime tears it down and sets it up "
        "again with backoff. The traceback is in the runtime log."
    )


class TeardownTimeout(PiPhiError):
    code = "teardown_timeout"
    default_hint = (
        "teardown() did not finish within the grace period and was abandoned; make it "
        "quicker or bound its network calls."
    )


class IllegalTransition(PiPhiError, RuntimeError):
    code = "illegal_transition"
    default_hint = "This is a bug in the runtime's supervisor; please report it with the log."


class ActorCallError(PiPhiError):
    """A command or refresh sent to an actor did not succeed."""

    code = "actor_call_failed"
    #: Whether the same call may succeed if sent again later.
    retryable: ClassVar[bool] = False


class ActorBusy(ActorCallError):
    code = "actor_busy"
    default_hint = "The device has too many requests queued; retry shortly."
    retryable = True


class ActorNotReady(ActorCallError):
    code = "actor_not_ready"
    default_hint = (
        "The device is restarting after an error; retry after its backoff "
        "(see its health record for the last error)."
    )
    retryable = True


class ActorStopped(ActorCallError):
    code = "actor_stopped"
    default_hint = "The device was deconfigured or the runtime is shutting down."


class UnknownCommand(ActorCallError):
    code = "unsupported_command"
    default_hint = "Send one of the commands the device declares (see /entities)."


class RefreshUnsupported(ActorCallError):
    code = "refresh_unsupported"
    default_hint = "This device pushes its data; its latest state is already current."


class CallTimeout(ActorCallError):
    code = "call_timeout"
    default_hint = "The device did not answer in time; check it is reachable and retry."
    retryable = True


class CallFailed(ActorCallError):
    code = "call_failed"
    default_hint = "The device rejected or failed the request; the cause is in the runtime log."


class CoreError(PiPhiError):
    """A call to PiPhi Core did not succeed. Never carries the token, not even in part."""

    code = "core_error"
    #: Whether the same call may succeed if sent again later.
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        details: dict[str, Any] = {"retryable": self.retryable}
        if status is not None:
            details["status"] = status
        if retry_after is not None:
            details["retry_after"] = retry_after
        super().__init__(message, hint=hint, details=details)
        self.status = status
        #: Seconds Core asked us to wait (its ``Retry-After``), if it said.
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_core, (type(self), self.message, self.hint, self.status, self.retry_after))


def _rebuild_core(
    cls: type[CoreError], message: str, hint: str, status: int | None, retry_after: float | None
) -> CoreError:
    return cls(message, hint=hint, status=status, retry_after=retry_after)


class CoreUnavailable(CoreError):
    code = "core_unavailable"
    default_hint = (
        "Core is not reachable: check PIPHI_CORE_BASE_URL and that Core is running. "
        "Data is kept in the spool and delivered when Core is back."
    )
    retryable = True


class CoreTimeout(CoreError):
    code = "core_timeout"
    default_hint = (
        "Core did not answer in time; it may be overloaded. Data is kept and retried with backoff."
    )
    retryable = True


class CoreServerError(CoreError):
    code = "core_server_error"
    default_hint = (
        "Core answered with a server error or asked us to slow down; data is kept and "
        "retried with backoff, honouring Retry-After. Check Core's log if it persists."
    )
    retryable = True


class CoreAuthRejected(CoreError):
    code = "core_auth_rejected"
    default_hint = (
        "Core refused the runtime's container id or token. Delivery pauses, keeping the "
        "data, and resumes when Core sends a new token (or set "
        "PIPHI_INTEGRATION_INTERNAL_TOKEN and restart)."
    )


class CoreRouteNotFound(CoreError):
    code = "core_route_not_found"
    default_hint = (
        "Core at PIPHI_CORE_BASE_URL does not serve this route: check the URL points at "
        "PiPhi Core and that its version has the route. Data is kept; retries are slow."
    )


class CoreRejected(CoreError):
    code = "core_rejected"
    default_hint = (
        "Core refused this payload as invalid. It is kept in the spool's rejected table "
        "for inspection and not retried."
    )


class CorePayloadTooLarge(CoreRejected):
    code = "core_payload_too_large"
    default_hint = (
        "Core refused this payload as too large (413). It is not retried; a summary is kept "
        "in the spool's rejected table. Report less per payload: the runtime refuses "
        "payloads over runtime.MAX_PAYLOAD_BYTES at the source, and this Core's limit is lower."
    )


class CoreUnexpectedResponse(CoreError):
    code = "core_unexpected_response"
    default_hint = (
        "Core answered in a shape the runtime does not understand; check that "
        "PIPHI_CORE_BASE_URL points at PiPhi Core."
    )


class CoreIdentityUnknown(CoreError):
    code = "core_identity_unknown"
    default_hint = (
        "The runtime does not know its container id yet: set PIPHI_CONTAINER_ID, or wait "
        "for Core's first request. Data is kept until then."
    )


class SourceNotDeclared(PiPhiError, LookupError):
    code = "source_not_declared"
    default_hint = (
        "Declare the shared source the actor reads from: Integration(..., "
        "sources=[MqttSource('mqtt://host:1883')]) (README, Shared sources)."
    )


class SpoolError(PiPhiError, OSError):
    code = "spool_error"
    default_hint = (
        "The delivery spool could not be opened or written. Check that its directory is "
        "writable, on a local disk with free space, and not used by another runtime "
        "(one spool per runtime)."
    )


class SpoolFull(SpoolError):
    code = "spool_disk_full"
    default_hint = (
        "The disk holding the runtime's state directory is full (or the process hit a file-size "
        "limit). Free space there or move PIPHI_STATE_DIR to a larger volume; delivery goes on "
        "from memory meanwhile and the spool resumes by itself once space is back."
    )


class SpoolIOError(SpoolError):
    code = "spool_io_error"
    default_hint = (
        "The disk holding the runtime's state directory failed a read or write. Check the "
        "device (dmesg, SMART) and its mount; delivery goes on from memory meanwhile."
    )


class SpoolBusy(SpoolError):
    code = "spool_busy"
    default_hint = (
        "Another process holds the state file locked: run one runtime per state directory "
        "(PIPHI_STATE_DIR), and keep backup or inspection tools off it while it runs."
    )


class SpoolCorrupt(SpoolError):
    code = "spool_corrupt"
    default_hint = (
        "The state file is damaged. The runtime moves a damaged file aside at start-up "
        "(never deleting it) and recovers what SQLite can still read; restart it to do so."
    )


def error_message(error: BaseException) -> str:
    """What went wrong, without the code and hint ``str()`` of a PiPhiError appends."""
    return error.message if isinstance(error, PiPhiError) else str(error) or type(error).__name__


def error_code(error: BaseException) -> str:
    """The stable code of ``error``; ``actor_exception`` for anything not ours."""
    return error.code if isinstance(error, PiPhiError) else "actor_exception"


def errors_beside_cancellation(group: BaseExceptionGroup[BaseException]) -> Exception:
    """The actor's own errors from a group that also holds a cancellation.

    A hook running its own nursery raises ``BaseExceptionGroup([Cancelled, X])`` when a
    child fails while being cancelled. ``except Exception`` misses that, and trio's cancel
    scope would strip the Cancelled and let ``X`` escape to every sibling. Keeping ``X`` as
    the hook's outcome and dropping the Cancelled is safe: trio delivers a cancellation
    again at every checkpoint of a scope that is still cancelled. A group of nothing but
    cancellations (or holding KeyboardInterrupt) is re-raised untouched.
    """
    _, rest = group.split(trio.Cancelled)
    if isinstance(rest, ExceptionGroup):
        return rest
    raise group
