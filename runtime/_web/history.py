"""Each device's recent changes of state, for the status page's detail view.

The supervisor keeps no history of its states, only the current one and since when, so the
web layer looks at every actor's state once a second and, when it differs from the last
look, records the device's health at that moment in a small ring. A look at an actor whose
state has not changed is a few attribute reads and a dictionary look-up (under a
microsecond), so the watch costs milliseconds a second at 5,000 devices
(docs/benchmarks.md, bench/status.py); only a device that changed pays for a health
snapshot. A spell shorter than a second may be missing from the history, never from
the restart count or the device's events, which the detail view shows beside it.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable

import attrs
import trio

from .._health import ActorHealth
from .._lifecycle import ActorState
from .._runtime import Runtime
from .._supervisor import Supervisor

__all__ = ["HealthHistory", "Transition"]

log = logging.getLogger("runtime.web")

#: Seconds between two looks at every actor.
SAMPLE_EVERY = 1.0
#: Changes kept per device.
KEEP = 20
#: Health snapshots taken between two yields to the scheduler (the first look takes one
#: per device, thousands of them).
_YIELD_EVERY = 200


@attrs.frozen(slots=True)
class Transition:
    at: float
    """Unix time the device entered ``state``."""
    state: str
    available: bool
    reason: str | None
    restarts: int
    error: str | None


class HealthHistory:
    """The last ``KEEP`` changes of state of every running device, by local config id (the
    actor nursery's key: Core's config ids need not be unique)."""

    def __init__(self, keep: int = KEEP) -> None:
        self._keep = keep
        self._seen: dict[str, tuple[Supervisor, ActorState]] = {}
        self._rings: dict[str, deque[Transition]] = {}

    def of(self, local_id: str) -> list[Transition]:
        """The device's recorded changes, newest first."""
        return list(reversed(self._rings.get(local_id, ())))

    async def sample(self, actors: Iterable[Supervisor]) -> None:
        """Look at every actor once; record the health of those whose state changed.

        A device with a new supervisor (restarted with a new config) counts as changed; a
        device no longer running is forgotten."""
        running = list(actors)
        seen = self._seen
        snapshots = 0
        for supervisor in running:
            local_id = supervisor.identity.id
            state = supervisor.state
            before = seen.get(local_id)
            if before is not None and before[0] is supervisor and before[1] is state:
                continue
            seen[local_id] = (supervisor, state)
            self._record(local_id, supervisor.health())
            snapshots += 1
            if snapshots % _YIELD_EVERY == 0:
                await trio.lowlevel.checkpoint()
        if len(seen) > len(running):  # every running device is in it: the rest are gone
            current = {s.identity.id for s in running}
            self._seen = {k: v for k, v in seen.items() if k in current}
            self._rings = {k: v for k, v in self._rings.items() if k in current}

    def _record(self, local_id: str, health: ActorHealth) -> None:
        ring = self._rings.get(local_id)
        if ring is None:
            ring = self._rings[local_id] = deque(maxlen=self._keep)
        error = health.last_error
        ring.append(
            Transition(
                at=health.state_since.timestamp(),
                state=health.state.value,
                available=health.available,
                reason=getattr(health, "availability_reason", None),
                restarts=health.restarts_total,
                error=error.code
                if error is not None and health.state is not ActorState.RUNNING
                else None,
            )
        )

    async def watch(self, find: Callable[[], Runtime | None]) -> None:
        """Sample the runtime ``find`` returns, once a second, until cancelled; while none
        runs (starting, stopping) there is nothing to look at. A failing look is logged
        and the next one tried: the page's history must never take the app down."""
        failing = False
        while True:
            runtime = find()
            try:
                if runtime is not None:
                    await self.sample(runtime.actors)
            except Exception:
                if not failing:
                    log.exception("the status page's health history could not look")
                failing = True
            else:
                failing = False
            await trio.sleep(SAMPLE_EVERY)
