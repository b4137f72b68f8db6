"""The supervisor: one per actor, the only code that drives it.

One trio task per actor runs a loop over a single wait: its doorbell, rung by the
shared scheduler when the next action is due and by the mailbox when a command or
refresh arrives. Everything the actor does therefore happens in that one task, which is
what serializes commands with polls without a lock. Push actors are the exception:
their ``run()`` never returns, so while it runs a second task serves the mailbox.

Failure handling, in short (the policy's docstring has the numbers):
- ``DeviceUnavailable`` or a timeout: state ``unavailable``, same hook retried after a
  backoff, session kept.
- ``ReconfigurationRequired``: teardown, state ``needs_reconfiguration``, one
  ``device.needs_reconfiguration`` event; set up again by a slow probe or at once when a
  changed config arrives (``reconfigure()``, or the reconciler's restart).
- any other exception: teardown, state ``backoff`` (or ``failed`` past the restart
  intensity, with one ``device.failed`` event), setup again after the delay.
- nothing an actor raises leaves this module: a sibling never sees it.

Availability is separate from the state: a device that produces no data is unavailable,
whatever the cause (``offline``, ``crashing``, ``failed``, ``needs_reconfiguration``).
One ``device.unavailable`` event per outage, whatever the reasons it went through, and
one ``device.available`` when data flows again: a successful poll, or a ``report()`` from
a push actor's ``run()``. A ``report()`` from inside ``poll()`` proves nothing: the
poll's own outcome decides.

The pieces it drives live beside it: the restart bookkeeping (``RestartTracker`` in
``_policy.py``), the mailbox (``_mailbox.py``) and the counters (``ActorCounters`` in
``_health.py``). The actor reaches it only through ``ActorOutputs`` (``_sink.py``).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import attrs
import trio

from ._actor import CommandContext, DeviceActor
from ._children import Child, Children, ChildView
from ._config import MIN_POLL_INTERVAL, DeviceIdentity
from ._errors import (
    ActorCallError,
    ActorCrashed,
    ActorNotReady,
    ActorStopped,
    CallFailed,
    DeviceUnavailable,
    PiPhiError,
    PollTimeout,
    ReconfigurationRequired,
    RefreshUnsupported,
    TeardownTimeout,
    UnknownCommand,
    error_code,
    error_message,
    errors_beside_cancellation,
)
from ._health import ActorCounters, ActorHealth, AvailabilityReason, ErrorRecord, wall_clock
from ._lifecycle import ActorState, check_transition
from ._logs import runtime_logger
from ._mailbox import MAILBOX_SIZE, REPLY_SLACK, Mailbox
from ._policy import RestartPolicy, RestartTracker
from ._reading import Reading, validate_readings
from ._scheduler import Doorbell, Scheduler
from ._sink import EventRecord, Severity, Sink, TelemetryRecord
from ._stalls import STALL_EPISODE

__all__ = ["MAILBOX_SIZE", "RECENT_EVENTS", "Refresh", "Supervisor"]

log = runtime_logger("runtime.supervisor")

#: Events each actor keeps for ``/events`` (its slice of the registry).
RECENT_EVENTS = 20
_BLOCKING_HINT = (
    "A hook made a blocking call (time.sleep, a synchronous client or file call, heavy "
    "CPU) and held every other device; await the work with trio.to_thread.run_sync()."
)
_DEFAULT_POLL_TIMEOUT_CAP = 10.0
#: Seconds before a poll the sink did not admit (``Sink.admit``) asks again.
DEFERRED_POLL_RETRY = 0.5
#: A child's default staleness window: this many poll intervals, and at least the floor.
_CHILD_STALE_INTERVALS = 3
_CHILD_STALE_FLOOR = 60.0
_CHILD_STALE_HINT = (
    "The gateway has not reported this device lately: check that it is powered, in "
    "range and still paired. If it was removed on purpose, the integration should "
    "forget_child() it."
)

S = ActorState


class _Watchdog:
    """Scheduled at each poll's deadline; cancels the actor's lane if that poll still runs."""

    __slots__ = ("_supervisor",)

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor: Supervisor | None = supervisor

    def ring(self) -> None:
        supervisor = self._supervisor
        # Nearly always the poll finished long ago: test that before reading the clock.
        if (
            supervisor is not None
            and supervisor._poll_open
            and trio.current_time() >= supervisor._poll_deadline
        ):
            supervisor._lane_cancelled = True
            supervisor._lane.cancel(reason="poll timeout")


@attrs.frozen
class Refresh:
    """The result of an on-demand read: the readings sent to Core and when."""

    readings: tuple[Reading, ...]
    observed_at: datetime


class Supervisor:
    """Runs one actor. Made by ``ActorNursery.spawn``; read ``health()``, send
    ``command()`` and ``refresh()``, and ``stop()`` it."""

    __slots__ = (
        "__weakref__",
        "_admit",
        "_armed",
        "_bell",
        "_children",
        "_counters",
        "_deferral",
        "_done",
        "_due",
        "_finished",
        "_interval",
        "_lane",
        "_lane_cancelled",
        "_last_error",
        "_last_readings",
        "_last_readings_at",
        "_mailbox",
        "_needs_teardown",
        "_on_exit",
        "_phase",
        "_policy",
        "_poll_deadline",
        "_poll_open",
        "_poll_timeout",
        "_ready",
        "_receiving",
        "_recent_events",
        "_reconfiguration_told",
        "_restarts",
        "_rng",
        "_run_ended",
        "_scheduler",
        "_scope",
        "_sink",
        "_started",
        "_state",
        "_state_since",
        "_state_updated",
        "_state_values",
        "_unavailable_reason",
        "_watchdog",
        "actor",
        "identity",
    )

    def __init__(
        self,
        actor: DeviceActor[Any],
        *,
        scheduler: Scheduler,
        sink: Sink,
        rng: random.Random,
        phase: float = 0.0,
        policy: RestartPolicy | None = None,
        on_exit: Callable[[Supervisor], None] | None = None,
        unavailable: AvailabilityReason | None = None,
        children: Iterable[Child] = (),
    ) -> None:
        """``unavailable``: why the actor this one replaces (same config, restarted for a
        changed one) had left the device unavailable; Core then hears ``device.available``
        when data flows, not a second ``device.unavailable``. ``children``: the children
        that actor kept, taken over as they were (Core heard of their availability)."""
        cls = type(actor)
        self.actor = actor
        self.identity: DeviceIdentity = actor.config.identity
        self._scheduler = scheduler
        self._sink = sink
        # Sinks written before admit() existed (it is public, runtime.lowlevel) admit all.
        self._admit: Callable[[], bool] = getattr(sink, "admit", _admit_all)
        self._rng = rng
        self._phase = phase
        self._policy = policy or cls.restart_policy
        # Made at the first failure: until then a fresh one would say nothing, and most
        # actors never fail.
        self._restarts: RestartTracker | None = None
        self._counters = ActorCounters()
        self._on_exit = on_exit
        self._interval, self._poll_timeout = _timings_for(cls, actor.config)
        self._bell = Doorbell()
        self._last_readings: tuple[Reading, ...] = ()
        self._last_readings_at: float | None = None
        self._scope = trio.CancelScope()
        self._lane = trio.CancelScope()  # replaced by run(); see there
        # Set with the watchdog's cancel: CancelScope.cancel_called reads the clock.
        self._lane_cancelled = False
        self._watchdog = _Watchdog(self)
        self._poll_deadline = math.inf  # while a scheduled poll runs: when it times out
        self._poll_open = False  # a scheduled poll is awaiting the actor
        self._run_ended = False  # a push actor's run() ended by itself; calls are being cut
        now = trio.current_time()
        self._state = S.STARTING
        self._state_since = now
        self._due = now  # the next action (setup, poll or run) is due at this trio time
        self._armed = math.nan  # the due time a scheduler entry already exists for
        # A poll the sink put off: (the retry's due time, the tick on the grid it was).
        self._deferral: tuple[float, float] | None = None
        self._started = False  # the first poll has been scheduled (spread only once)
        self._needs_teardown = False  # setup() was entered and teardown() has not run since
        self._ready = False  # setup() completed: a session exists
        self._receiving = False  # a push actor's run() is running: its reports prove life
        self._unavailable_reason = unavailable  # None: available
        self._reconfiguration_told = False  # Core was told to change the config; not again
        self._last_error: ErrorRecord | None = None
        self._mailbox: Mailbox | None = None  # made on the first call: most actors get none
        self._state_values: dict[str, Any] | None = None
        self._state_updated: float | None = None
        self._recent_events: deque[EventRecord] | None = None
        self._done: trio.Event | None = None
        self._finished = False
        # Made at the first report naming a child: most actors never have one.
        self._children: Children | None = None
        actor._outputs = self
        if children:
            self._children_kept().adopt(children)

    def __repr__(self) -> str:
        name = type(self.actor).__name__
        return f"<Supervisor {name} {self.identity.config_id} {self._state.value}>"

    # -- public face ---------------------------------------------------------------------

    @property
    def state(self) -> ActorState:
        return self._state

    @property
    def availability_reason(self) -> AvailabilityReason | None:
        """Why the device produces no data (see ``ActorHealth``); None while available."""
        return self._unavailable_reason

    def health(self) -> ActorHealth:
        """An immutable snapshot of this actor's health, consistent at the moment of the call."""
        now = trio.current_time()
        epoch = time.time() - now  # one offset for every time in this snapshot

        def wall(trio_time: float | None) -> datetime | None:
            return None if trio_time is None else datetime.fromtimestamp(epoch + trio_time, UTC)

        counters, restarts = self._counters, self._restarts
        p50, p95 = counters.percentiles()
        polling = self.actor.mode == "poll" and self._state not in (S.STOPPING, S.STOPPED)
        return ActorHealth(
            config_id=self.identity.config_id,
            device_id=self.identity.device_id,
            actor=type(self.actor).__name__,
            state=self._state,
            state_since=datetime.fromtimestamp(epoch + self._state_since, UTC),
            available=self._unavailable_reason is None,
            availability_reason=self._unavailable_reason,
            restarts_total=restarts.restarts_total if restarts else 0,
            restarts_in_window=restarts.restarts_in_window(now) if restarts else 0,
            consecutive_failures=restarts.consecutive if restarts else 0,
            last_error=self._last_error,
            last_poll_started=wall(counters.last_poll_started),
            last_poll_ended=wall(counters.last_poll_ended),
            next_poll_due=wall(self._due) if polling else None,
            poll_duration_last=counters.last,
            poll_duration_p50=p50,
            poll_duration_p95=p95,
            polls=counters.polls,
            overruns=counters.overruns,
            readings=counters.readings,
            blocking_calls=counters.blocking_calls,
            longest_stall=counters.longest_stall,
        )

    def published_state(self) -> tuple[Mapping[str, Any], datetime | None]:
        """The device's latest value per key and when the last one came (a read-only copy):
        its own readings and what the actor published, the latest winning per key
        whichever path it came by."""
        return MappingProxyType(dict(self._state_values or {})), wall_clock(self._state_updated)

    def latest_readings(self) -> tuple[tuple[Reading, ...], datetime | None]:
        """The device's own most recent readings (a poll's or a report's) and when."""
        return self._last_readings, wall_clock(self._last_readings_at)

    def children(self) -> tuple[ChildView, ...]:
        """The devices this actor reported for (a gateway's children), by device id."""
        return () if self._children is None else self._children.views()

    def child(self, device_id: str) -> ChildView | None:
        """Child ``device_id`` as of now, if this actor has it."""
        if self._children is None:
            return None
        found = self._children.views(device_id)
        return found[0] if found else None

    def has_child(self, device_id: str) -> bool:
        return self._children is not None and device_id in self._children

    @property
    def reports_children(self) -> bool:
        """Whether the actor ever reported for a child (forgotten ones included)."""
        return self._children is not None

    @property
    def child_stale_after(self) -> float:
        """Seconds a child may go unheard before it is unavailable (``child_stale_after``,
        else three poll intervals, at least 60 s)."""
        return _child_window(type(self.actor), self._interval)

    def children_unavailable(self) -> int:
        return 0 if self._children is None else self._children.unavailable()

    def hand_over_children(self) -> tuple[Child, ...]:
        """The children as kept, for the actor that replaces this one (same config)."""
        return () if self._children is None else self._children.records()

    async def command(
        self,
        name: str,
        args: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the actor enforces it (see _call)
        context: CommandContext | None = None,
    ) -> Any:
        """Run command ``name`` on the actor, serialized with its polls; return its result.

        ``context`` says which device it targets (a child's id for a gateway) and the
        request's ids; a handler that declares a second parameter receives it. Without
        one, the target is the actor's own device.

        Raises an ``ActorCallError``: UnknownCommand, ActorBusy, ActorNotReady,
        ActorStopped, CallTimeout or CallFailed (the handler raised; the cause is
        chained). ``details["started"]`` says whether an interrupted or timed-out call had
        started (it may have reached the device); a CallFailed whose cause is a lost
        connection or a timeout mid-exchange has ``details["may_have_run"]``.
        """
        cls = type(self.actor)
        spec = cls.commands.get(name)
        if spec is None:
            raise UnknownCommand(
                f"{cls.__name__} has no command {name!r}",
                details={"command": name, "available": sorted(cls.commands)},
            )
        _check_timeout(timeout)
        handler = getattr(self.actor, spec.method)
        payload: Mapping[str, Any] = MappingProxyType(dict(args or {}))
        limit = timeout or spec.timeout or cls.command_timeout
        if spec.takes_context:
            ctx = context or self._own_context(name)
            return await self._call(f"command {name!r}", lambda: handler(payload, ctx), limit)
        return await self._call(f"command {name!r}", lambda: handler(payload), limit)

    def _own_context(self, name: str) -> CommandContext:
        identity = self.identity
        return CommandContext(
            command=name,
            config_id=identity.config_id,
            device_id=identity.device_id,
            entity_id=f"{identity.config_id}:{identity.device_id}",
        )

    async def refresh(self, *, timeout: float | None = None) -> Refresh:  # noqa: ASYNC109
        """Poll the device now, through the mailbox, and return what was read.

        The readings are delivered like a scheduled poll's; the schedule is unchanged.
        Push actors raise RefreshUnsupported.
        """
        _check_timeout(timeout)
        if self.actor.mode != "poll":
            raise RefreshUnsupported(f"{type(self.actor).__name__} is a push actor")

        async def read() -> Refresh:
            outcome = await self._poll(trio.current_time(), scheduled=False)
            if isinstance(outcome, BaseException):
                raise outcome
            ended = self._counters.last_poll_ended
            return Refresh(outcome, wall_clock(ended or trio.current_time()))

        limit = timeout or (self._poll_timeout + REPLY_SLACK)
        result: Refresh = await self._call("refresh", read, limit)
        return result

    async def reconfigure(self, config: Any) -> None:
        """Hand a changed config (same id, same actor class) to the actor's reconfigure()
        hook, serialized with its polls; then adopt it. Raises an ActorCallError if the
        actor could not take it (the caller restarts the actor instead)."""
        actor = self.actor
        if not actor.reconfigurable:
            raise CallFailed(f"{type(actor).__name__} does not define reconfigure()")
        if self._state is S.NEEDS_RECONFIGURATION:
            # No session to hand it to, and the actor's task is parked until its probe:
            # take the config and set up with it now.
            self._adopt(config)
            self._reconfiguration_told = False
            self._due = trio.current_time()
            self._bell.ring()
            await trio.lowlevel.checkpoint()
            return

        async def adopt() -> None:
            await actor.reconfigure(config)
            self._adopt(config)

        await self._call("reconfigure", adopt, type(actor).command_timeout)

    def _adopt(self, config: Any) -> None:
        actor = self.actor
        actor.config = config
        actor._log = None
        self.identity = config.identity
        self._interval, self._poll_timeout = _timings_for(type(actor), config)
        if self._children is not None:
            self._children.retime(self.child_stale_after)

    def recent_events(self) -> tuple[EventRecord, ...]:
        """The last events this actor and its supervisor emitted, oldest first."""
        return tuple(self._recent_events or ())

    def cancel(self) -> None:
        """Ask the actor to stop; teardown runs shielded within its grace period."""
        self._scope.cancel()

    async def stop(self) -> None:
        """Stop the actor and wait until its teardown has finished."""
        self._scope.cancel()
        await self.wait_stopped()

    async def wait_stopped(self) -> None:
        if self._finished:
            await trio.lowlevel.checkpoint()
            return
        if self._done is None:
            self._done = trio.Event()
        await self._done.wait()

    # -- called by the actor's output methods --------------------------------------------

    def on_state(self, state: Mapping[str, Any]) -> None:
        if self._state_values is None:
            self._state_values = {}
        self._state_values.update(state)
        self._state_updated = trio.current_time()

    def on_report(
        self, batch: tuple[Reading, ...], device_id: str | None, observed_at: float | None
    ) -> None:
        if device_id is not None and device_id != self.identity.device_id:
            # A child's report proves the child alive, wherever it was made, and says
            # nothing of the gateway's own device.
            self._child_report(batch, device_id, observed_at)
            return
        if batch:
            self._emit_telemetry(batch, observed_at)
        # Data arriving from a push actor's run() proves the device is back. Only there:
        # inside a poll the poll's own outcome decides (a failure heartbeat reported just
        # before raising DeviceUnavailable is no proof of life), and setup(), teardown()
        # or a command say nothing about the running session.
        if self._receiving:
            self._succeeded(trio.current_time())

    def on_forget_child(self, device_id: str) -> bool:
        forgotten = self._children is not None and self._children.forget(device_id)
        if forgotten:
            self.actor.log.info("forgot child %s", device_id)
        return forgotten

    def on_event(
        self, event_type: str, data: dict[str, Any], severity: Severity, device_id: str | None
    ) -> str:
        record = EventRecord(
            identity=self.identity,
            device_id=device_id or self.identity.device_id,
            event_type=event_type,
            severity=severity,
            data=MappingProxyType(data),
            source=type(self.actor).__name__,
        )
        self._send_event(record)
        return record.event_id

    # -- told by the stall watchdog (runtime/_stalls.py) -------------------------------

    def on_stall(self, seconds: float, where: str) -> bool:
        """The actor's code held the trio thread for ``seconds`` (at ``where``). Counted
        every time; said once per episode (``STALL_EPISODE`` quiet seconds apart)."""
        now = trio.current_time()
        counters = self._counters
        counters.blocking_calls += 1
        counters.longest_stall = max(counters.longest_stall or 0.0, seconds)
        new_episode = counters.stalled_at is None or now - counters.stalled_at > STALL_EPISODE
        counters.stalled_at = now
        if not new_episode:
            self.actor.log.debug("blocked the event loop again for %.2f s in %s", seconds, where)
            return False
        self.actor.log.warning(
            "blocked the event loop for %.2f s in %s: every other device waited", seconds, where
        )
        self._emit_event(
            "runtime.blocking_call",
            "warning",
            {"seconds": round(seconds, 3), "where": where, "hint": _BLOCKING_HINT},
        )
        return True

    # -- the actor's task ----------------------------------------------------------------

    async def run(self) -> None:
        """The actor's task body; ``ActorNursery.spawn`` starts it. Returns once stopped."""
        try:
            with self._scope:
                await trio.lowlevel.checkpoint()  # stopped before it ever ran: no setup
                while True:
                    # The lane is the one cancel scope a scheduled poll runs in. Only the
                    # watchdog cancels it, when a poll overruns its timeout; then a new lane
                    # is opened. Polls thus need no cancel scope of their own, which is most
                    # of a poll's cost otherwise (docs/benchmarks.md).
                    with trio.CancelScope() as lane:
                        self._lane, self._lane_cancelled = lane, False
                        await self._loop()
                    if self._poll_open:  # the poll was interrupted where it stood
                        self._poll_open = False
                        error = _timed_out("poll", self._poll_timeout, None)
                        started = self._counters.last_poll_started or 0.0
                        await self._finish_poll(started, (), error, scheduled=True)
        finally:
            await self._shutdown()

    async def _loop(self) -> None:
        """Run what is due, serve the mailbox, or wait for the doorbell, until the lane is
        cancelled. No two actions run without a yield to trio between them: whatever an
        actor does (a poll that returns without awaiting, a hook that fails at once with
        a retry due at once), its siblings and the routes get the thread in between."""
        yielded = True
        # A poll that swallowed the watchdog's cancellation returns here with the lane
        # cancelled; leave it at once rather than run anything else inside it.
        while not self._lane_cancelled:
            now = trio.current_time()
            if not yielded and (now >= self._due or self._mailbox):
                # Only here can the loop go on without waiting: then yield first.
                await trio.lowlevel.checkpoint()
                yielded = True
                continue
            yielded = False
            # What is due comes first: it makes calls sent before the first setup() wait
            # for it, and lets a push actor start run(), which serves calls alongside.
            if now >= self._due:
                self._armed = math.nan
                if not self._ready:
                    await self._setup()
                elif self.actor.mode == "poll":
                    if self._admit():
                        self._resume_grid()
                        await self._poll(now, scheduled=True)
                    else:
                        self._defer(now)
                else:
                    await self._run_push()
            elif self._mailbox:
                await self._mailbox.serve(self)
            else:
                if self._armed != self._due:
                    self._armed = self._due
                    self._scheduler.ring_at(self._due, self._bell)
                await self._bell.wait()
                yielded = True

    def _defer(self, now: float) -> None:
        """The sink cannot take readings in: ask again shortly, remembering the tick."""
        deferral = self._deferral
        tick = deferral[1] if deferral is not None and deferral[0] == self._due else self._due
        self._due = now + min(self._interval, DEFERRED_POLL_RETRY)
        self._deferral = (self._due, tick)
        if self._children is not None:
            self._children.hold()

    def _resume_grid(self) -> None:
        """A poll that was put off runs: the schedule goes on from its tick, not from now
        (so fleets released together keep their spread), and the ticks that passed
        meanwhile are skipped and counted as overruns, as for a late poll; its children
        get one window to be heard again. A deferral whose retry was replaced (a
        restart, a new config) leaves the schedule as that made it."""
        deferral, self._deferral = self._deferral, None
        if deferral is None:
            return
        if deferral[0] == self._due:
            self._due = deferral[1]
        if self._children is not None:
            self._children.release(trio.current_time())

    async def _setup(self) -> None:
        if self._state is not S.STARTING:
            self._transition(S.STARTING)
        self._needs_teardown = True
        timeout = type(self.actor).setup_timeout
        error: Exception | None = None
        with trio.move_on_after(timeout) as scope:
            try:
                await self.actor.setup()
            except Exception as exc:
                error = exc
            except BaseExceptionGroup as group:
                error = errors_beside_cancellation(group)
        if _timed_out_in(scope, error):
            error = _timed_out("setup", timeout, error)
        if error is None:
            self._ready = True
            self._transition(S.RUNNING)
            if self.actor.mode == "poll" and not self._started:
                # Spread first polls over one interval so N actors never poll in lockstep.
                self._started = True
                self._due = trio.current_time() + self._phase * self._interval
            else:
                self._due = trio.current_time()
        elif isinstance(error, DeviceUnavailable):
            # No session yet to keep: release whatever setup() had opened, then retry it.
            await self._teardown()
            self._unavailable(error, "setup", trio.current_time())
        else:
            await self._failure(error, "setup")

    async def _poll(self, started: float, *, scheduled: bool) -> tuple[Reading, ...] | Exception:
        """One poll. Returns the readings or the error, already handled (state, events).

        A scheduled poll is bounded by the watchdog cancelling the lane; a refresh runs
        inside a mailbox call, so it takes a cancel scope of its own (refreshes are rare).
        A poll that returned is a success even if its deadline passed meanwhile.
        """
        self._counters.last_poll_started = started
        batch: tuple[Reading, ...] = ()
        error: Exception | None = None
        if scheduled:
            self._poll_open = True
            self._poll_deadline = started + self._poll_timeout
            self._scheduler.ring_at(self._poll_deadline, self._watchdog)
            try:
                batch, error = await self._read()
            finally:
                self._poll_deadline = math.inf
            self._poll_open = False
            timed_out = self._lane_cancelled and error is not None
        else:
            with trio.move_on_after(self._poll_timeout) as scope:
                batch, error = await self._read()
            timed_out = _timed_out_in(scope, error)
        if timed_out:
            error = _timed_out("poll", self._poll_timeout, error)
        await self._finish_poll(started, batch, error, scheduled=scheduled)
        return batch if error is None else error

    async def _read(self) -> tuple[tuple[Reading, ...], Exception | None]:
        try:
            return validate_readings(await self.actor.poll(), source="poll()"), None
        except Exception as exc:
            return (), exc
        except BaseExceptionGroup as group:
            return (), errors_beside_cancellation(group)

    async def _finish_poll(
        self,
        started: float,
        batch: tuple[Reading, ...],
        error: Exception | None,
        *,
        scheduled: bool,
    ) -> None:
        ended = trio.current_time()
        counters = self._counters
        counters.last_poll_ended = ended
        counters.polls += 1
        counters.add(ended - started)
        if scheduled:
            due = self._due + self._interval
            if due < ended:
                # Fixed rate: ticks that passed while the actor was busy are skipped (and
                # counted), not burst.
                missed = math.floor((ended - due) / self._interval) + 1
                due += missed * self._interval
                counters.overruns += missed
            self._due = due
        was_unavailable = self._state is S.UNAVAILABLE
        if error is None:
            if batch:
                self._emit_telemetry(batch, None)
            self._succeeded(ended)
            if not scheduled and was_unavailable:
                # A refresh found the device back: resume the schedule, not the backoff.
                self._due = min(self._due, ended + self._interval)
        elif isinstance(error, DeviceUnavailable):
            # A refresh failing during an outage tells nothing new: the scheduled retry
            # and its backoff stand, or a UI refreshing every few seconds would defer it.
            self._unavailable(error, "poll", ended, reschedule=scheduled or not was_unavailable)
        else:
            await self._failure(error, "poll")

    async def _run_push(self) -> None:
        if self._state is S.RUNNING and self._restarts is not None:
            # Retries during an outage are not health; data arriving is (see _succeeded).
            self._restarts.healthy_from(trio.current_time())
        error: Exception
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._serve_mailbox_while_running)
            self._receiving = True
            try:
                await self.actor.run()
                error = ActorCrashed(
                    f"{type(self.actor).__name__}.run() returned",
                    hint="A push actor's run() should keep receiving until it is cancelled.",
                )
            except Exception as exc:
                error = exc
            except BaseExceptionGroup as group:
                error = errors_beside_cancellation(group)
            finally:
                self._receiving = False
            # Calls cut short from here on learn the actor is restarting, unless this task
            # is itself being cancelled (stopped).
            self._run_ended = trio.current_effective_deadline() != -math.inf
            nursery.cancel_scope.cancel()
        self._run_ended = False
        if isinstance(error, DeviceUnavailable):
            self._unavailable(error, "run", trio.current_time())
        else:
            await self._failure(error, "run")

    async def _serve_mailbox_while_running(self) -> None:
        while True:
            await self._bell.wait()
            if self._mailbox:
                await self._mailbox.serve(self, until_due=False)

    # -- outcomes ------------------------------------------------------------------------

    def _succeeded(self, now: float) -> None:
        if self._restarts is not None:
            self._restarts.succeeded(now)
        if self._state is S.UNAVAILABLE:
            self._transition(S.RUNNING)
        if self._unavailable_reason is not None:
            self._unavailable_reason = None
            self._reconfiguration_told = False
            self.actor.log.info("device is available again")
            self._emit_event("device.available", "info", {})

    def _unavailable(
        self, error: Exception, phase: str, now: float, *, reschedule: bool = True
    ) -> None:
        self._record(error, phase, now)
        restarts = self._tracker()
        restarts.missed()
        if not reschedule:
            return
        restarts.forget_if_healthy(now)
        self._produces_nothing("offline", error, phase)
        if self._state is not S.UNAVAILABLE:
            self._transition(S.UNAVAILABLE)
        self._due = now + restarts.next_delay(self._rng)

    async def _failure(self, error: Exception, phase: str) -> None:
        """An exception that is not the device being offline: the session goes."""
        if isinstance(error, ReconfigurationRequired):
            await self._needs_reconfiguration(error, phase)
        else:
            await self._crash(error, phase)

    async def _crash(self, error: Exception, phase: str) -> None:
        now = trio.current_time()
        self._record(error, phase, now)
        restarts = self._tracker()
        newly_failed = restarts.crashed(now)
        if not restarts.repeated((type(error).__qualname__, str(error))):
            self.actor.log.error("%s() raised; restarting with backoff", phase, exc_info=error)
        else:
            self.actor.log.debug(
                "%s() raised the same error again (restart %d)", phase, restarts.restarts_total
            )
        self._produces_nothing("failed" if restarts.failed else "crashing", error, phase)
        if newly_failed:
            policy = restarts.policy
            self.actor.log.error(
                "more than %d restarts in %g s: marked failed, retrying about every %g s",
                policy.max_restarts,
                policy.restart_window,
                policy.max_delay,
            )
            self._emit_event(
                "device.failed",
                "error",
                {
                    **_described(error, phase),
                    "restarts_in_window": restarts.restarts_in_window(now),
                    "retry_every_s": policy.max_delay,
                },
            )
        self._transition(S.FAILED if restarts.failed else S.BACKOFF)
        await self._teardown()
        self._due = trio.current_time() + restarts.next_delay(self._rng)

    async def _needs_reconfiguration(self, error: ReconfigurationRequired, phase: str) -> None:
        """Retrying cannot help: release the session and wait for a changed config, with
        a slow probe in case the device side was fixed instead."""
        now = trio.current_time()
        self._record(error, phase, now)
        restarts = self._tracker()
        restarts.missed()
        restarts.forget_if_healthy(now)
        probe = type(self.actor).reconfigure_probe_interval
        # Torn down before the state says so: reconfigure() adopts a config directly only
        # in that state, which it must never see while teardown() still runs.
        await self._teardown()
        self._transition(S.NEEDS_RECONFIGURATION)
        self._produces_nothing("needs_reconfiguration", error, phase)
        if not self._reconfiguration_told:
            self._reconfiguration_told = True
            self.actor.log.error(
                "%s() says the device needs a new configuration (%s): %s; next probe in %g s",
                phase,
                error.reason,
                error.message,
                probe,
            )
            self._emit_event(
                "device.needs_reconfiguration",
                "error",
                {**_described(error, phase), "reason": error.reason, "probe_every_s": probe},
            )
        self._due = trio.current_time() + probe

    def _produces_nothing(self, reason: AvailabilityReason, error: Exception, phase: str) -> None:
        """Mark the device unavailable for ``reason``; Core hears once per outage."""
        if self._unavailable_reason is not None:
            self._unavailable_reason = reason
            self.actor.log.debug("still unavailable (%s, %s): %s", reason, phase, error)
            return
        self._unavailable_reason = reason
        self.actor.log.warning("device unavailable (%s, %s): %s", reason, phase, error)
        self._emit_event(
            "device.unavailable",
            "warning" if reason in ("offline", "crashing") else "error",
            {**_described(error, phase), "reason": reason},
        )

    def _tracker(self) -> RestartTracker:
        restarts = self._restarts
        if restarts is None:
            restarts = self._restarts = RestartTracker(self._policy)
        return restarts

    def _record(self, error: BaseException, phase: str, now: float) -> None:
        self._last_error = ErrorRecord(
            type=type(error).__qualname__,
            message=error_message(error),
            code=error_code(error),
            hint=error.hint if isinstance(error, PiPhiError) else ActorCrashed.default_hint,
            phase=phase,
            at=now,
        )

    # -- the mailbox's view of this actor (MailboxOwner) ----------------------------------

    async def _call(
        self,
        what: str,
        run: Callable[[], Awaitable[Any]],
        timeout: float,  # noqa: ASYNC109 - the actor enforces it (see Mailbox.call)
    ) -> Any:
        if self._finished or self._state in (S.STOPPING, S.STOPPED):
            raise ActorStopped(f"{what} not sent: the actor is stopped")
        box = self._mailbox
        if box is None:
            box = self._mailbox = Mailbox(self._bell)
        return await box.call(what, run, timeout)

    @property
    def next_due(self) -> float:
        return self._due

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        return self.actor.log

    def refusal(self, what: str) -> ActorCallError | None:
        if self._ready:
            return None
        retry = max(0.0, self._due - trio.current_time())
        hint = None
        if self._state is S.NEEDS_RECONFIGURATION and self._last_error is not None:
            hint = self._last_error.hint
        return ActorNotReady(
            f"{what} refused: the device is {self._state.value}; next attempt in {retry:.1f} s",
            hint=hint,
            details={"state": self._state.value, "retry_after": round(retry, 3)},
        )

    def interruption(self, what: str) -> ActorCallError:
        if self._run_ended:
            return ActorNotReady(
                f"{what} interrupted: the actor is restarting", details={"started": True}
            )
        return ActorStopped(f"{what} interrupted: the actor is stopping", details={"started": True})

    # -- stopping --------------------------------------------------------------------------

    async def _teardown(self) -> None:
        if not self._needs_teardown:
            return
        self._needs_teardown = False
        self._ready = False
        grace = type(self.actor).stop_timeout
        error: Exception | None = None
        with trio.move_on_after(grace, shield=True) as scope:
            try:
                await self.actor.teardown()
            except Exception as exc:
                error = exc
            except BaseExceptionGroup as group:
                error = errors_beside_cancellation(group)
        if _timed_out_in(scope, error):
            self.actor.log.warning("teardown() did not finish within %g s; abandoned", grace)
            error = TeardownTimeout(f"teardown() exceeded {grace:g} s")
        elif error is not None:
            self.actor.log.warning("teardown() raised: %s", error, exc_info=error)
        if error is not None:
            self._record(error, "teardown", trio.current_time())

    async def _shutdown(self) -> None:
        try:
            with trio.CancelScope(shield=True):
                if self._state is not S.STOPPED:
                    self._transition(S.STOPPING)
                if self._mailbox is not None:
                    self._mailbox.close(_not_run)
                await self._teardown()
                self._transition(S.STOPPED)
        finally:
            # Whatever happened above, waiters must wake and the nursery must forget us.
            self._finished = True
            if self._done is not None:
                self._done.set()
            if self._on_exit is not None:
                self._on_exit(self)
            # Break the reference cycles (actor <-> supervisor, watchdog <-> supervisor,
            # calls whose closures hold us), so a stopped actor is freed by reference
            # counting rather than left for a full GC pass over every live actor.
            self.actor._outputs = None
            self._watchdog._supervisor = None
            self._mailbox = None
            if self._children is not None:
                self._children.close()

    # -- helpers ---------------------------------------------------------------------------

    def _transition(self, target: ActorState) -> None:
        check_transition(self._state, target)
        log.debug("%s: %s -> %s", self.identity.config_id, self._state.value, target.value)
        self._state = target
        self._state_since = trio.current_time()

    def _deliver(self, send: Callable[[Any], None], record: Any) -> None:
        """Hand a record to the sink. A sink must not raise; if one does, say so loudly
        rather than let it take this actor (or, from the supervisor, every actor) down."""
        try:
            send(record)
        except Exception:
            log.exception("the sink refused a record from %s; it is lost", self.identity.config_id)

    def _emit_telemetry(self, batch: tuple[Reading, ...], observed_at: float | None) -> None:
        """The actor's own readings (a poll's or a report's): its state, then Core."""
        self._counters.readings += len(batch)
        now = trio.current_time()
        self._last_readings, self._last_readings_at = batch, now
        values = self._state_values
        if values is None:
            values = self._state_values = {}
        for reading in batch:
            values[reading.metric] = reading.value
        self._state_updated = now
        self._deliver(
            self._sink.telemetry,
            TelemetryRecord(
                identity=self.identity,
                device_id=self.identity.device_id,
                readings=batch,
                observed_at=time.time() if observed_at is None else observed_at,
            ),
        )

    def _child_report(
        self, batch: tuple[Reading, ...], device_id: str, observed_at: float | None
    ) -> None:
        """A report naming a child: it is alive and these are its values; the readings go
        to Core stamped with its device id (also past the cap, where it is not kept)."""
        self._children_kept().seen(device_id, batch, observed_at, trio.current_time())
        if batch:
            self._counters.readings += len(batch)
            self._deliver(
                self._sink.telemetry,
                TelemetryRecord(
                    identity=self.identity,
                    device_id=device_id,
                    readings=batch,
                    observed_at=time.time() if observed_at is None else observed_at,
                ),
            )

    def _children_kept(self) -> Children:
        children = self._children
        if children is None:
            cls = type(self.actor)
            children = self._children = Children(
                self._scheduler,
                stale_after=self.child_stale_after,
                cap=cls.max_children,
                tell=self._child_changed,
                log=self.actor.log,
            )
        return children

    def _child_changed(self, event_type: str, child: Child, data: dict[str, Any]) -> None:
        """One child went unavailable or came back: one event for its device id, shaped
        like the actor's own (``reason``, ``message``, ``code``, ``hint``, ``phase``)."""
        parent = self.identity.device_id
        if event_type == "device.unavailable":
            window = data["stale_after_s"]
            self.actor.log.info("child %s unavailable: not heard for %g s", child.device_id, window)
            data = {
                "message": f"{child.device_id} was not heard from for {window:g} s",
                "code": "child_not_seen",
                "hint": _CHILD_STALE_HINT,
                "phase": "report",
                "reason": "offline",
                "last_seen": datetime.fromtimestamp(
                    time.time() - (trio.current_time() - child.last_seen), UTC
                ).isoformat(),
                **data,
            }
            severity: Severity = "warning"
        else:
            self.actor.log.info("child %s is available again", child.device_id)
            severity = "info"
        self._send_event(
            EventRecord(
                identity=self.identity,
                device_id=child.device_id,
                event_type=event_type,
                severity=severity,
                data=MappingProxyType({**data, "parent_device_id": parent}),
                source="supervisor",
            )
        )

    def _send_event(self, record: EventRecord) -> None:
        if self._recent_events is None:
            self._recent_events = deque(maxlen=RECENT_EVENTS)
        self._recent_events.append(record)
        self._deliver(self._sink.event, record)

    def _emit_event(self, event_type: str, severity: Severity, data: dict[str, Any]) -> None:
        self._send_event(
            EventRecord(
                identity=self.identity,
                device_id=self.identity.device_id,
                event_type=event_type,
                severity=severity,
                data=MappingProxyType(data),
                source="supervisor",
            ),
        )


def _described(error: Exception, phase: str) -> dict[str, Any]:
    """The parts of an error an event carries to Core: what, its code, what to do."""
    return {
        "message": error_message(error),
        "code": error_code(error),
        "hint": error.hint if isinstance(error, PiPhiError) else ActorCrashed.default_hint,
        "phase": phase,
    }


def _not_run(what: str) -> ActorStopped:
    return ActorStopped(f"{what} not run: the actor stopped")


def _timed_out_in(scope: trio.CancelScope, error: Exception | None) -> bool:
    """Whether a hook under ``scope`` ran out of time. A hook that returned is a success
    even if its deadline passed meanwhile (``cancel_called`` alone would say otherwise)."""
    return scope.cancelled_caught or (error is not None and scope.cancel_called)


def _timed_out(phase: str, timeout: float, raised: Exception | None) -> PollTimeout:
    error = PollTimeout(f"{phase}() did not finish within {timeout:g} s")
    error.__cause__ = raised
    return error


def _admit_all() -> bool:
    return True


def _timings_for(cls: type[DeviceActor[Any]], config: Any) -> tuple[float, float]:
    """An actor's poll interval and poll timeout for ``config``. Configs and actor classes
    are checked against ``MIN_POLL_INTERVAL`` already; a config built without validation
    (``model_construct``) is held to it here."""
    interval = max(MIN_POLL_INTERVAL, float(config.poll_interval_seconds or cls.poll_interval))
    timeout = cls.poll_timeout
    return interval, min(interval, _DEFAULT_POLL_TIMEOUT_CAP) if timeout is None else float(timeout)


def _child_window(cls: type[DeviceActor[Any]], interval: float) -> float:
    stale = cls.child_stale_after
    if stale is not None:
        return float(stale)
    return max(_CHILD_STALE_INTERVALS * interval, _CHILD_STALE_FLOOR)


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and not (timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
