"""The actor lifecycle: its states and the table of legal transitions.

    STARTING ──► RUNNING ◄──────────────┐
       │  ▲         │                   │ (a poll or report succeeds)
       │  │         ▼                   │
       │  ├──── UNAVAILABLE ────────────┘   DeviceUnavailable / timeout: session kept
       │  │         │
       ▼  │         ▼
     BACKOFF / FAILED   (unexpected exception: torn down, set up again after a delay)
     NEEDS_RECONFIGURATION   (ReconfigurationRequired: torn down, probed slowly, and at
                              once on a changed config)

    any state except STOPPED ──► STOPPING ──► STOPPED

The supervisor is the only writer of an actor's state, and every write goes through
the table: a transition that is not listed is a supervisor bug and raises.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from ._errors import IllegalTransition

__all__ = ["TRANSITIONS", "ActorState", "can_transition", "check_transition"]


class ActorState(enum.Enum):
    STARTING = "starting"
    """setup() is running."""
    RUNNING = "running"
    """Set up and healthy: polling on schedule, or run() is receiving."""
    UNAVAILABLE = "unavailable"
    """The device is offline (DeviceUnavailable or a timeout); retried with backoff, no teardown."""
    BACKOFF = "backoff"
    """Torn down after an unexpected exception; waiting before setup() again."""
    FAILED = "failed"
    """Restarted too often within the window; still retried, at the backoff cap."""
    NEEDS_RECONFIGURATION = "needs_reconfiguration"
    """The device refuses its config (ReconfigurationRequired); torn down, set up again
    only by a slow probe or a changed config."""
    STOPPING = "stopping"
    """Cancelled; teardown() is running under the grace period."""
    STOPPED = "stopped"
    """Terminal."""


_S = ActorState
_AFTER_FAILURE = frozenset(
    {_S.UNAVAILABLE, _S.BACKOFF, _S.FAILED, _S.NEEDS_RECONFIGURATION, _S.STOPPING}
)

TRANSITIONS: Mapping[ActorState, frozenset[ActorState]] = {
    _S.STARTING: frozenset({_S.RUNNING}) | _AFTER_FAILURE,
    _S.RUNNING: _AFTER_FAILURE,
    # Back to RUNNING when a retry succeeds; to STARTING when setup() itself was
    # what found the device unavailable and is retried.
    _S.UNAVAILABLE: frozenset({_S.RUNNING, _S.STARTING}) | _AFTER_FAILURE,
    _S.BACKOFF: frozenset({_S.STARTING, _S.STOPPING}),
    _S.FAILED: frozenset({_S.STARTING, _S.STOPPING}),
    _S.NEEDS_RECONFIGURATION: frozenset({_S.STARTING, _S.STOPPING}),
    _S.STOPPING: frozenset({_S.STOPPED}),
    _S.STOPPED: frozenset(),
}


def can_transition(current: ActorState, target: ActorState) -> bool:
    """Whether the lifecycle allows moving from ``current`` to ``target``."""
    return target in TRANSITIONS[current]


def check_transition(current: ActorState, target: ActorState) -> None:
    if target not in TRANSITIONS[current]:
        raise IllegalTransition(f"Illegal actor transition {current.value} -> {target.value}")
