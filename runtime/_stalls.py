"""A watchdog of the trio thread: how long the event loop stalls, and whose fault it was.

An actor that calls ``time.sleep(2)``, a synchronous HTTP client or a long computation in
a hook holds the one trio thread: every other device misses its ticks and ``/health``
stops answering, while the culprit looks healthy. trio cannot interrupt it, so this
watchdog only makes it visible:

- A thread outside trio posts a no-op callback to the loop every ``period`` seconds and
  waits for it to run. A healthy loop runs it within milliseconds; the thread then sleeps
  again. On the trio thread that costs a few callbacks a second, nothing per actor.
- When the callback has not run within ``threshold``, the trio thread is stuck inside one
  task step. The watchdog samples that thread's stack (``sys._current_frames``) and walks
  it out to the supervisor frame the actor's code runs under. Two samples ``confirm``
  seconds apart must name the same supervisor: a loop that is merely busy with many short
  steps is blamed on nobody.
- Once the loop answers, the stall's length and culprit go back to the trio thread by the
  same callback channel, so every record is written there: the actor's health
  (``blocking_calls``, ``longest_stall``), one ``runtime.blocking_call`` warning event per
  episode, and a ``Concern`` while any actor has blocked within ``episode`` seconds.

Stalls are real time. Under a virtual clock (tests) time stands still while the thread is
blocked, so ``open_actor_nursery`` leaves the watchdog off there unless asked.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Protocol

import attrs
import trio

from ._config import DeviceIdentity
from ._health import Concern
from ._logs import runtime_logger

__all__ = ["STALL_EPISODE", "StallWatch", "Stalled", "owners_by_method"]

log = runtime_logger("runtime.stalls")

#: Seconds without a stall after which an actor's next stall starts a new episode (and
#: one more warning event), and after which a past stall no longer degrades ``/health``.
STALL_EPISODE = 300.0


class Stalled(Protocol):
    """What the watchdog tells the supervisor whose actor blocked the loop."""

    @property
    def identity(self) -> DeviceIdentity: ...

    def on_stall(self, seconds: float, where: str) -> bool:
        """Record a stall of ``seconds`` at ``where``; True if it began a new episode."""
        ...


@attrs.frozen
class _Recent:
    config_id: str
    at: float
    longest: float


class StallWatch:
    """Watches the trio thread of the nursery it runs in; see the module docstring.

    ``owners`` are the code objects of the supervisor's methods and the function that
    gives the supervisor from one of their frames; ``_nursery.py`` passes them, so this
    module needs nothing from the supervisor's.
    """

    def __init__(
        self,
        owners: Callable[[FrameType], Stalled | None],
        *,
        threshold: float = 0.25,
        confirm: float = 0.05,
        period: float = 0.1,
    ) -> None:
        if not (threshold > 0 and confirm > 0 and period > 0):
            raise ValueError("threshold, confirm and period must be positive seconds")
        self._owner_of = owners
        self.threshold = threshold
        self.confirm = confirm
        self.period = period
        self._stop = threading.Event()
        self._recent: dict[str, _Recent] = {}  # config id -> its latest stall
        self.unattributed = 0
        """Stalls no actor could be named for (routes, delivery, the collector, load)."""
        self.longest_unattributed = 0.0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        token = trio.lowlevel.current_trio_token()
        trio_thread = threading.get_ident()
        task_status.started()
        try:
            await trio.to_thread.run_sync(
                self._watch,
                token,
                trio_thread,
                abandon_on_cancel=True,
                limiter=trio.CapacityLimiter(1),  # not one of the shared worker threads
            )
        finally:
            self._stop.set()  # the abandoned thread leaves within one period

    def concerns(self) -> list[Concern]:
        """One concern while any actor blocked the loop within the last episode."""
        now = trio.current_time()
        recent = [r for r in self._recent.values() if now - r.at <= STALL_EPISODE]
        self._recent = {k: r for k, r in self._recent.items() if now - r.at <= STALL_EPISODE}
        if not recent:
            return []
        worst = max(recent, key=lambda r: r.longest)
        return [
            Concern(
                "actors_blocking",
                f"{len(recent)} device(s) blocked the event loop in the last "
                f"{STALL_EPISODE:g} s, {worst.config_id} for up to {worst.longest:.2f} s",
                "A hook made a blocking call (time.sleep, a synchronous client, heavy CPU); "
                "see blocking_calls in /diagnostics and move that work into "
                "trio.to_thread.run_sync().",
            )
        ]

    # -- the watchdog thread ---------------------------------------------------------------

    def _watch(self, token: trio.lowlevel.TrioToken, trio_thread: int) -> None:
        while not self._stop.is_set():
            answered = threading.Event()
            posted = time.monotonic()
            try:
                token.run_sync_soon(answered.set)
            except trio.RunFinishedError:
                return
            if not answered.wait(self.threshold):
                culprit = self._while_stalled(answered, trio_thread)
                seconds = time.monotonic() - posted
                try:
                    token.run_sync_soon(self._record, culprit, seconds)
                except trio.RunFinishedError:
                    return
            self._stop.wait(self.period)

    def _while_stalled(
        self, answered: threading.Event, trio_thread: int
    ) -> tuple[Stalled, str] | None:
        """Sample the trio thread until it answers; the culprit two samples agree on."""
        previous = None
        while True:
            sample = self._sample(trio_thread)
            if sample is not None and previous is not None and sample[0] is previous[0]:
                while not answered.wait(self.period):  # confirmed; now only the length
                    if self._stop.is_set():
                        return None
                return sample
            previous = sample
            if answered.wait(self.confirm) or self._stop.is_set():
                return None

    def _sample(self, trio_thread: int) -> tuple[Stalled, str] | None:
        frame = sys._current_frames().get(trio_thread)
        where = _describe(frame) if frame is not None else "?"
        while frame is not None:
            owner = self._owner_of(frame)
            if owner is not None:
                return owner, where
            frame = frame.f_back
        return None

    # -- back on the trio thread -----------------------------------------------------------

    def _record(self, culprit: tuple[Stalled, str] | None, seconds: float) -> None:
        if culprit is None:
            self.unattributed += 1
            self.longest_unattributed = max(self.longest_unattributed, seconds)
            log.warning("the event loop stalled for %.2f s; no actor could be named", seconds)
            return
        owner, where = culprit
        owner.on_stall(seconds, where)
        config_id = owner.identity.config_id
        previous = self._recent.get(config_id)
        longest = max(seconds, previous.longest if previous else 0.0)
        self._recent[config_id] = _Recent(config_id, trio.current_time(), longest)


def owners_by_method(cls: type, methods: Iterable[str]) -> Callable[[FrameType], Stalled | None]:
    """A ``StallWatch`` owner lookup for instances of ``cls``: a frame of one of
    ``methods`` (the bodies of the tasks an instance runs its actor's code in) gives its
    ``self``. Only those: a route reading every actor's health runs other methods of
    theirs, and is nobody's actor. Read only while the trio thread is stuck, from the
    watchdog thread, which holds the GIL meanwhile."""
    codes = frozenset(getattr(cls, name).__code__ for name in methods)

    def owner(frame: FrameType) -> Stalled | None:
        if frame.f_code not in codes:
            return None
        candidate = frame.f_locals.get("self")
        return candidate if isinstance(candidate, cls) else None  # type: ignore[return-value]

    return owner


def _describe(frame: FrameType) -> str:
    """The innermost Python frame of the stuck thread: where the blocking call was made."""
    code = frame.f_code
    return f"{code.co_name} ({os.path.basename(code.co_filename)}:{frame.f_lineno})"
