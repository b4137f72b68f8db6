"""Per-actor health: cheap counters written on every poll, immutable snapshots for readers.

The supervisor writes plain attributes and a small ring of poll durations on its hot
path; percentiles and wall-clock times are computed only when someone asks for a
snapshot (``/diagnostics``, a test, a dashboard).
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal, TypeAlias, overload

import attrs
import trio

from ._lifecycle import ActorState

__all__ = [
    "ActorCounters",
    "ActorHealth",
    "AvailabilityReason",
    "Concern",
    "ErrorRecord",
    "PollTimings",
    "fleet_concerns",
    "wall_clock",
]

_WINDOW = 64  # poll durations kept for the rolling percentiles

#: Why a device produces no data: ``offline`` (DeviceUnavailable or a timeout),
#: ``crashing`` (its hooks raise other exceptions), ``failed`` (past the restart
#: intensity), ``needs_reconfiguration`` (ReconfigurationRequired).
AvailabilityReason: TypeAlias = Literal["offline", "crashing", "failed", "needs_reconfiguration"]


@overload
def wall_clock(trio_time: float) -> datetime: ...
@overload
def wall_clock(trio_time: None) -> None: ...
@overload
def wall_clock(trio_time: float | None) -> datetime | None: ...


def wall_clock(trio_time: float | None) -> datetime | None:
    """Convert a trio-clock reading to an aware UTC datetime (trio's clock has no epoch).

    Under a test's virtual clock the result moves with virtual time, so ordering and
    spacing of recorded times stay meaningful.
    """
    if trio_time is None:
        return None
    return datetime.fromtimestamp(time.time() - (trio.current_time() - trio_time), UTC)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@attrs.frozen
class ErrorRecord:
    """What went wrong last, in terms a person can act on."""

    type: str
    """The exception's qualified class name."""
    message: str
    code: str
    hint: str
    phase: str
    """Which hook raised: setup, poll, run, teardown, report."""
    at: float
    """trio time; see ``ActorHealth.last_error_at``."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "message": self.message,
            "code": self.code,
            "hint": self.hint,
            "phase": self.phase,
            "at": _iso(wall_clock(self.at)),
        }


@attrs.frozen
class Concern:
    """One reason the runtime is not fully healthy: ``/health`` says ``degraded`` while any
    part (the fleet, the delivery path, the spool, the process) reports one."""

    code: str
    """Stable and machine-readable, e.g. ``core_unreachable``, ``devices_failed``."""
    message: str
    hint: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "hint": self.hint}


#: What each unhealthy state means for the fleet, and what to do about it. A device is
#: healthy only while ``running``; ``stopping`` and ``stopped`` devices are on their way
#: out of the configuration and say nothing about it.
_STATE_CONCERNS: Mapping[ActorState, tuple[str, str]] = {
    ActorState.STARTING: (
        "setting up (setup() is running)",
        "Usually brief; a device that stays here hangs in setup() until its setup_timeout.",
    ),
    ActorState.UNAVAILABLE: (
        "offline or not answering in time, retried with backoff",
        "See /diagnostics?state=unavailable for each one's last error and hint.",
    ),
    ActorState.BACKOFF: (
        "crashing and waiting to be set up again",
        "See /diagnostics?state=backoff for each one's last error and hint.",
    ),
    ActorState.FAILED: (
        "restarted too often and are marked failed",
        "See /diagnostics?state=failed for each one's last error and hint.",
    ),
    ActorState.NEEDS_RECONFIGURATION: (
        "refusing their configuration and waiting for a changed one",
        "See /diagnostics?state=needs_reconfiguration for what to change in each config.",
    ),
}


def fleet_concerns(by_state: Mapping[str, int]) -> list[Concern]:
    """What the actors' states (counted by state name) say about the fleet's health: one
    concern per unhealthy state with devices in it, ``devices_<state>``, so ``/health``
    is ``ok`` only while every device is running."""
    concerns = []
    for state, (what, hint) in _STATE_CONCERNS.items():
        count = by_state.get(state.value, 0)
        if count:
            concerns.append(Concern(f"devices_{state.value}", f"{count} device(s) {what}", hint))
    return concerns


class PollTimings:
    """Last poll duration and a ring of recent ones for p50/p95 (float32: 256 bytes)."""

    __slots__ = ("_n", "_ring", "last")

    def __init__(self) -> None:
        self._ring = array("f", bytes(4 * _WINDOW))
        self._n = 0
        self.last: float | None = None

    def add(self, seconds: float) -> None:
        self._ring[self._n % _WINDOW] = seconds
        self._n += 1
        self.last = seconds

    def percentiles(self) -> tuple[float | None, float | None]:
        count = min(self._n, _WINDOW)
        if count == 0:
            return None, None
        ordered = sorted(self._ring[:count])
        # Nearest-rank percentiles: always an observed duration, never interpolated.
        p50 = ordered[max(0, -(-50 * count // 100) - 1)]
        p95 = ordered[max(0, -(-95 * count // 100) - 1)]
        return p50, p95


class ActorCounters(PollTimings):
    """What one actor's polls and reports add up to, with its poll timings: written by
    its supervisor on the hot path (plain attributes), read into an ``ActorHealth`` on
    demand. Times are trio time. One object with the timings rather than two: every
    object an idle actor holds is one more for each garbage-collector pass to scan."""

    __slots__ = (
        "blocking_calls",
        "last_poll_ended",
        "last_poll_started",
        "longest_stall",
        "overruns",
        "polls",
        "readings",
        "stalled_at",
    )

    def __init__(self) -> None:
        super().__init__()
        self.blocking_calls = 0
        """Times the actor's code held the trio thread past the stall watchdog's threshold."""
        self.longest_stall: float | None = None
        self.stalled_at: float | None = None
        self.polls = 0
        self.overruns = 0
        """Ticks skipped because the actor was still busy."""
        self.readings = 0
        self.last_poll_started: float | None = None
        self.last_poll_ended: float | None = None


@attrs.frozen(kw_only=True)
class ActorHealth:
    """An immutable snapshot of one actor's health. Times are aware UTC datetimes."""

    config_id: str
    device_id: str
    actor: str
    state: ActorState
    state_since: datetime
    available: bool
    """Whether the device produces data (see ``availability_reason``)."""
    availability_reason: AvailabilityReason | None
    """Why it does not; None while available."""
    restarts_total: int
    restarts_in_window: int
    consecutive_failures: int
    last_error: ErrorRecord | None
    last_poll_started: datetime | None
    last_poll_ended: datetime | None
    next_poll_due: datetime | None
    poll_duration_last: float | None
    poll_duration_p50: float | None
    poll_duration_p95: float | None
    polls: int
    overruns: int
    readings: int
    blocking_calls: int = 0
    """Times the actor's code blocked the event loop (see ``runtime/_stalls.py``)."""
    longest_stall: float | None = None
    """Seconds, the longest of those."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; durations in seconds, times as ISO-8601 strings."""
        return {
            "config_id": self.config_id,
            "device_id": self.device_id,
            "actor": self.actor,
            "state": self.state.value,
            "state_since": _iso(self.state_since),
            "available": self.available,
            "availability_reason": self.availability_reason,
            "restarts_total": self.restarts_total,
            "restarts_in_window": self.restarts_in_window,
            "consecutive_failures": self.consecutive_failures,
            "last_error": self.last_error.to_dict() if self.last_error else None,
            "last_poll_started": _iso(self.last_poll_started),
            "last_poll_ended": _iso(self.last_poll_ended),
            "next_poll_due": _iso(self.next_poll_due),
            "poll_duration_last": self.poll_duration_last,
            "poll_duration_p50": self.poll_duration_p50,
            "poll_duration_p95": self.poll_duration_p95,
            "polls": self.polls,
            "overruns": self.overruns,
            "readings": self.readings,
            "blocking_calls": self.blocking_calls,
            "longest_stall": self.longest_stall,
        }
