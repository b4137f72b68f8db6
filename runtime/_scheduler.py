"""One shared timer for every actor: a timer wheel and a single sleeping task.

A ``trio.sleep`` (or any deadline-bearing cancel scope) per actor costs a cancel scope
and a deadline-heap entry per wait, and trio drops stale heap entries lazily, so each
scope lives until its deadline would have passed: at 10k actors polling at 1 Hz that is
10k reference cycles a second surviving into the old GC generations, which then pause
the process for 100+ ms (measured; see docs/benchmarks.md). docs/design.md (Timers) has the
CPU side: a shared sleeper is about 4x cheaper.

Here anything with a ``ring()`` method is put in the slot of its due time; one task
sleeps until the earliest slot and rings everything in it. Slots are ``resolution``
wide, so the sleeper wakes at most once per resolution step however many actors are
due, at the cost of at most ``resolution`` of added lateness. Entries are references in
per-slot lists: no allocation per entry.
"""

from __future__ import annotations

import heapq
import math
from typing import Protocol

import trio

__all__ = ["Doorbell", "Ringable", "Scheduler"]


class Ringable(Protocol):
    def ring(self) -> None: ...


class Doorbell:
    """A single-waiter, level-triggered wakeup: ``ring()`` never blocks and is never lost.

    A ring while nobody waits is remembered and consumed by the next ``wait()``. This is
    what a ``trio.Event`` per wait would do, without allocating one per cycle per actor.
    """

    __slots__ = ("_abort", "_rung", "_task")

    def __init__(self) -> None:
        self._task: trio.lowlevel.Task | None = None
        self._rung = False
        # Bound once: a closure per wait() would be two more young objects per idle
        # actor for every garbage-collector pass to scan.
        self._abort = self._aborted

    def ring(self) -> None:
        task = self._task
        if task is not None:
            self._task = None
            trio.lowlevel.reschedule(task)
        else:
            self._rung = True

    async def wait(self) -> None:
        if self._rung:
            await trio.lowlevel.checkpoint()
            self._rung = False
            return
        if self._task is not None:
            raise RuntimeError("Doorbell.wait() is single-waiter; another task is waiting")
        self._task = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort)

    def _aborted(self, _: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
        self._task = None
        return trio.lowlevel.Abort.SUCCEEDED


class Scheduler:
    """Rings targets at their due times. Run ``run()`` in the nursery that owns the actors.

    Entries cannot be cancelled; a target decides for itself whether a ring is still
    relevant (the supervisor compares the time with its own due time), so a stale entry
    costs one spurious ``ring()``.
    """

    def __init__(self, *, resolution: float = 0.005) -> None:
        if not (resolution > 0 and math.isfinite(resolution)):
            raise ValueError("resolution must be a positive number of seconds")
        self.resolution = resolution
        self._slots: dict[int, list[Ringable]] = {}
        self._order: list[int] = []  # heap of the slot numbers in _slots
        self._wakeup = Doorbell()
        self._sleeping_until = math.inf

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._slots.values())

    def ring_at(self, when: float, target: Ringable) -> None:
        """Ring ``target`` once trio time reaches ``when`` (never earlier)."""
        resolution = self.resolution
        slot = math.ceil(when / resolution)
        if slot * resolution < when:  # float rounding must never make a ring early
            slot += 1
        bucket = self._slots.get(slot)
        if bucket is not None:
            bucket.append(target)
            return
        self._slots[slot] = [target]
        heapq.heappush(self._order, slot)
        if slot * resolution < self._sleeping_until:
            self._wakeup.ring()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        order, slots, resolution = self._order, self._slots, self.resolution
        task_status.started()
        while True:
            now = trio.current_time()
            while order and order[0] * resolution <= now:
                for target in slots.pop(heapq.heappop(order)):
                    target.ring()
            self._sleeping_until = order[0] * resolution if order else math.inf
            with trio.move_on_at(self._sleeping_until):
                await self._wakeup.wait()
