"""The supervisor: one per actor, the only code that drives it.

One trio task per actor runs a loop over a single wait: its doorbell, rung by the
shared scheduler when the next action is due and by the mailbox when a command or
refresh arrives. Everything the actor does therefore happens in that one task, which is
what serializes commands with polls without a lock. Push actors are the exception:
their ``run()`` never returns, so while it runs a second task serves the mailbox.

Failure handling, in short (the policy's docstring has the numbers):
- ``DeviceUnavailable`` or a timeout: state ``unavailable``, same hook retried after a
  backoff, session kept; one ``device.unavailable`` event per outage, one
  ``device.available`` when data flows again.
- any other exception: teardown, state ``backoff`` (or ``failed`` past the restart
  intensity), setup again after the delay.
- nothing an actor raises leaves this module: a sibling never sees it.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import attrs
import trio

from ._actor import DeviceActor
from ._config import DeviceIdentity
from ._errors import (
    ActorBusy,
    ActorCallError,
    ActorCrashed,
    ActorNotReady,
    ActorStopped,
    CallFailed,
    CallTimeout,
    DeviceUnavailable,
    PiPhiError,
    PollTimeout,
    RefreshUnsupported,
    TeardownTimeout,
    UnknownCommand,
)
from ._health import ActorHealth, ErrorRecord, PollTimings, wall_clock
from ._lifecycle import ActorState, check_transition
from ._logs import runtime_logger
from ._policy import RestartPolicy
from ._reading import Reading, validate_readings
from ._scheduler import Doorbell, Scheduler
from ._sink import EventRecord, Severity, Sink, TelemetryRecord

__all__ = ["MAILBOX_SIZE", "Refresh", "Supervisor"]

log = runtime_logger("runtime.supervisor")

#: Requests (commands, refreshes) that may wait for one actor; more are refused at once.
MAILBOX_SIZE = 16
#: Events each actor keeps for ``/events`` (its slice of the registry).
RECENT_EVENTS = 20
#: How long a caller waits past its deadline for the actor's own timeout reply.
_REPLY_SLACK = 1.0
_DEFAULT_POLL_TIMEOUT_CAP = 10.0

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


@attrs.define(eq=False)
class _Call:
    """A request waiting in an actor's mailbox, with the slot its reply goes into."""

    what: str
    run: Callable[[], Awaitable[Any]]
    deadline: float
    done: trio.Event = attrs.field(factory=trio.Event)
    value: Any = None
    error: PiPhiError | None = None
    started: bool = False  # the actor began running it: it may have reached the device
    abandoned: bool = False

    def reply(self, value: Any = None, error: PiPhiError | None = None) -> None:
        self.value, self.error = value, error
        self.done.set()


class Supervisor:
    """Runs one actor. Made by ``ActorNursery.spawn``; read ``health()``, send
    ``command()`` and ``refresh()``, and ``stop()`` it."""

    __slots__ = (
        "__weakref__",
        "_announced_unavailable",
        "_armed",
        "_attempt",
        "_bell",
        "_consecutive",
        "_done",
        "_due",
        "_failed",
        "_finished",
        "_healthy_since",
        "_interval",
        "_lane",
        "_lane_cancelled",
        "_last_error",
        "_last_error_key",
        "_last_readings",
        "_last_readings_at",
        "_mailbox",
        "_needs_teardown",
        "_on_exit",
        "_overruns",
        "_phase",
        "_policy",
        "_poll_deadline",
        "_poll_ended",
        "_poll_open",
        "_poll_started",
        "_poll_timeout",
        "_polls",
        "_readings",
        "_ready",
        "_recent_events",
        "_restarts",
        "_restarts_total",
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
        "_timings",
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
    ) -> None:
        cls = type(actor)
        self.actor = actor
        self.identity: DeviceIdentity = actor.config.identity
        self._scheduler = scheduler
        self._sink = sink
        self._rng = rng
        self._phase = phase
        self._policy = policy or cls.restart_policy
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
        self._started = False  # the first poll has been scheduled (spread only once)
        self._needs_teardown = False  # setup() was entered and teardown() has not run since
        self._ready = False  # setup() completed: a session exists
        self._attempt = 0
        self._failed = False
        self._healthy_since: float | None = None
        self._restarts: deque[float] | None = None
        self._restarts_total = 0
        self._consecutive = 0
        self._announced_unavailable = False
        self._last_error: ErrorRecord | None = None
        self._last_error_key: tuple[str, str] | None = None
        self._timings = PollTimings()
        self._poll_started: float | None = None
        self._poll_ended: float | None = None
        self._polls = 0
        self._overruns = 0
        self._readings = 0
        self._mailbox: deque[_Call] | None = None
        self._state_values: dict[str, Any] | None = None
        self._state_updated: float | None = None
        self._recent_events: deque[EventRecord] | None = None
        self._done: trio.Event | None = None
        self._finished = False
        actor._supervisor = self

    def __repr__(self) -> str:
        name = type(self.actor).__name__
        return f"<Supervisor {name} {self.identity.config_id} {self._state.value}>"

    # -- public face ---------------------------------------------------------------------

    @property
    def state(self) -> ActorState:
        return self._state

    def health(self) -> ActorHealth:
        """An immutable snapshot of this actor's health, consistent at the moment of the call."""
        now = trio.current_time()
        epoch = time.time() - now  # one offset for every time in this snapshot

        def wall(trio_time: float | None) -> datetime | None:
            return None if trio_time is None else datetime.fromtimestamp(epoch + trio_time, UTC)

        window = self._policy.restart_window
        p50, p95 = self._timings.percentiles()
        polling = self.actor.mode == "poll" and self._state not in (S.STOPPING, S.STOPPED)
        return ActorHealth(
            config_id=self.identity.config_id,
            device_id=self.identity.device_id,
            actor=type(self.actor).__name__,
            state=self._state,
            state_since=datetime.fromtimestamp(epoch + self._state_since, UTC),
            available=not self._announced_unavailable,
            restarts_total=self._restarts_total,
            restarts_in_window=sum(1 for t in self._restarts or () if now - t <= window),
            consecutive_failures=self._consecutive,
            last_error=self._last_error,
            last_poll_started=wall(self._poll_started),
            last_poll_ended=wall(self._poll_ended),
            next_poll_due=wall(self._due) if polling else None,
            poll_duration_last=self._timings.last,
            poll_duration_p50=p50,
            poll_duration_p95=p95,
            polls=self._polls,
            overruns=self._overruns,
            readings=self._readings,
        )

    def published_state(self) -> tuple[Mapping[str, Any], datetime | None]:
        """The latest state the actor published and when (a read-only copy)."""
        return MappingProxyType(dict(self._state_values or {})), wall_clock(self._state_updated)

    def latest_readings(self) -> tuple[tuple[Reading, ...], datetime | None]:
        """The device's own most recent readings (a poll's or a report's) and when."""
        return self._last_readings, wall_clock(self._last_readings_at)

    async def command(
        self,
        name: str,
        args: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the actor enforces it (see _call)
    ) -> Any:
        """Run command ``name`` on the actor, serialized with its polls; return its result.

        Raises an ``ActorCallError``: UnknownCommand, ActorBusy, ActorNotReady,
        ActorStopped, CallTimeout (``details["started"]`` says whether it may have reached
        the device) or CallFailed (the handler raised; the cause is chained).
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
        return await self._call(f"command {name!r}", lambda: handler(payload), limit)

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
            return Refresh(outcome, wall_clock(self._poll_ended or trio.current_time()))

        limit = timeout or (self._poll_timeout + _REPLY_SLACK)
        result: Refresh = await self._call("refresh", read, limit)
        return result

    async def reconfigure(self, config: Any) -> None:
        """Hand a changed config (same id, same actor class) to the actor's reconfigure()
        hook, serialized with its polls; then adopt it. Raises an ActorCallError if the
        actor could not take it (the caller restarts the actor instead)."""
        actor = self.actor
        if not actor.reconfigurable:
            raise CallFailed(f"{type(actor).__name__} does not define reconfigure()")

        async def adopt() -> None:
            await actor.reconfigure(config)
            actor.config = config
            actor._log = None
            self.identity = config.identity
            self._interval, self._poll_timeout = _timings_for(type(actor), config)

        await self._call("reconfigure", adopt, type(actor).command_timeout)

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
        if batch:
            self._emit_telemetry(batch, device_id, observed_at)
        # Data arriving while the session is live proves the device is back. Only there:
        # a report from setup() or teardown() says nothing about the running session.
        if self._ready and self._state in (S.RUNNING, S.UNAVAILABLE):
            self._succeeded(trio.current_time())

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
                        await self._finish_poll(
                            self._poll_started or 0.0, (), error, scheduled=True
                        )
        finally:
            await self._shutdown()

    async def _loop(self) -> None:
        # A poll that swallowed the watchdog's cancellation returns here with the lane
        # cancelled; leave it at once rather than run anything else inside it.
        while not self._lane_cancelled:
            now = trio.current_time()
            # What is due comes first: it makes calls sent before the first setup() wait
            # for it, and lets a push actor start run(), which serves calls alongside.
            if now >= self._due:
                self._armed = math.nan
                if not self._ready:
                    await self._setup()
                elif self.actor.mode == "poll":
                    await self._poll(now, scheduled=True)
                else:
                    await self._run_push()
            elif self._mailbox:
                await self._serve_mailbox()
            else:
                if self._armed != self._due:
                    self._armed = self._due
                    self._scheduler.ring_at(self._due, self._bell)
                await self._bell.wait()

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
                error = _errors_beside_cancellation(group)
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
            await self._crash(error, "setup")

    async def _poll(self, started: float, *, scheduled: bool) -> tuple[Reading, ...] | Exception:
        """One poll. Returns the readings or the error, already handled (state, events).

        A scheduled poll is bounded by the watchdog cancelling the lane; a refresh runs
        inside a mailbox call, so it takes a cancel scope of its own (refreshes are rare).
        A poll that returned is a success even if its deadline passed meanwhile.
        """
        self._poll_started = started
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
            return (), _errors_beside_cancellation(group)

    async def _finish_poll(
        self,
        started: float,
        batch: tuple[Reading, ...],
        error: Exception | None,
        *,
        scheduled: bool,
    ) -> None:
        ended = trio.current_time()
        self._poll_ended = ended
        self._polls += 1
        self._timings.add(ended - started)
        if scheduled:
            due = self._due + self._interval
            if due < ended:
                # Fixed rate: ticks that passed while the actor was busy are skipped (and
                # counted), not burst.
                missed = math.floor((ended - due) / self._interval) + 1
                due += missed * self._interval
                self._overruns += missed
            self._due = due
        was_unavailable = self._state is S.UNAVAILABLE
        if error is None:
            if batch:
                self._emit_telemetry(batch, None, None)
            self._succeeded(ended)
            if not scheduled and was_unavailable:
                # A refresh found the device back: resume the schedule, not the backoff.
                self._due = min(self._due, ended + self._interval)
        elif isinstance(error, DeviceUnavailable):
            # A refresh failing during an outage tells nothing new: the scheduled retry
            # and its backoff stand, or a UI refreshing every few seconds would defer it.
            self._unavailable(error, "poll", ended, reschedule=scheduled or not was_unavailable)
        else:
            await self._crash(error, "poll")

    async def _run_push(self) -> None:
        if self._state is S.RUNNING:
            # Retries during an outage are not health; data arriving is (see _succeeded).
            self._healthy_since = trio.current_time()
        error: Exception
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._serve_mailbox_while_running)
            try:
                await self.actor.run()
                error = ActorCrashed(
                    f"{type(self.actor).__name__}.run() returned",
                    hint="A push actor's run() should keep receiving until it is cancelled.",
                )
            except Exception as exc:
                error = exc
            except BaseExceptionGroup as group:
                error = _errors_beside_cancellation(group)
            # Calls cut short from here on learn the actor is restarting, unless this task
            # is itself being cancelled (stopped).
            self._run_ended = trio.current_effective_deadline() != -math.inf
            nursery.cancel_scope.cancel()
        self._run_ended = False
        if isinstance(error, DeviceUnavailable):
            self._unavailable(error, "run", trio.current_time())
        else:
            await self._crash(error, "run")

    # -- outcomes ------------------------------------------------------------------------

    def _succeeded(self, now: float) -> None:
        self._consecutive = 0
        if self._healthy_since is None:
            self._healthy_since = now
        if self._state is S.UNAVAILABLE:
            self._transition(S.RUNNING)
        if self._announced_unavailable:
            self._announced_unavailable = False
            self.actor.log.info("device is available again")
            self._emit_event("device.available", "info", {})

    def _unavailable(
        self, error: Exception, phase: str, now: float, *, reschedule: bool = True
    ) -> None:
        self._record(error, phase, now)
        self._consecutive += 1
        if not reschedule:
            return
        self._forget_attempts_if_healthy(now)
        if not self._announced_unavailable:
            self._announced_unavailable = True
            self.actor.log.warning("device unavailable (%s): %s", phase, error)
            self._emit_event(
                "device.unavailable",
                "warning",
                {"reason": _message(error), "code": _code(error), "phase": phase},
            )
        else:
            self.actor.log.debug("still unavailable (%s): %s", phase, error)
        if self._state is not S.UNAVAILABLE:
            self._transition(S.UNAVAILABLE)
        self._due = now + self._retry_delay()

    async def _crash(self, error: Exception, phase: str) -> None:
        now = trio.current_time()
        self._record(error, phase, now)
        self._consecutive += 1
        self._restarts_total += 1
        self._forget_attempts_if_healthy(now)
        policy = self._policy
        restarts = self._restarts
        if restarts is None:
            restarts = self._restarts = deque()
        restarts.append(now)
        while now - restarts[0] > policy.restart_window:
            restarts.popleft()
        newly_failed = not self._failed and len(restarts) > policy.max_restarts
        self._failed = self._failed or newly_failed
        key = (type(error).__qualname__, str(error))
        if key != self._last_error_key:
            self.actor.log.error("%s() raised; restarting with backoff", phase, exc_info=error)
        else:
            self.actor.log.debug(
                "%s() raised the same error again (restart %d)", phase, self._restarts_total
            )
        self._last_error_key = key
        if newly_failed:
            self.actor.log.error(
                "more than %d restarts in %g s: marked failed, retrying about every %g s",
                policy.max_restarts,
                policy.restart_window,
                policy.max_delay,
            )
        self._transition(S.FAILED if self._failed else S.BACKOFF)
        await self._teardown()
        self._due = trio.current_time() + self._retry_delay()

    def _retry_delay(self) -> float:
        policy = self._policy
        if self._failed:
            # At the cap, jittered down by up to a fifth so actors that failed together
            # do not retry in lockstep.
            return policy.max_delay * self._rng.uniform(0.8, 1.0)
        delay = policy.delay(self._attempt, self._rng)
        self._attempt += 1
        return delay

    def _forget_attempts_if_healthy(self, now: float) -> None:
        since, self._healthy_since = self._healthy_since, None
        if since is not None and now - since >= self._policy.reset_after:
            self._attempt = 0
            self._failed = False
            self._last_error_key = None
            if self._restarts is not None:
                self._restarts.clear()

    def _record(self, error: BaseException, phase: str, now: float) -> None:
        self._last_error = ErrorRecord(
            type=type(error).__qualname__,
            message=_message(error),
            code=_code(error),
            hint=error.hint if isinstance(error, PiPhiError) else ActorCrashed.default_hint,
            phase=phase,
            at=now,
        )

    # -- mailbox ---------------------------------------------------------------------------

    async def _call(
        self,
        what: str,
        run: Callable[[], Awaitable[Any]],
        timeout: float,  # noqa: ASYNC109 - see below
    ) -> Any:
        # A deadline the actor knows, rather than a caller's cancel scope: the actor skips
        # calls that expired while queued, and a reply can say whether the call started.
        if self._finished or self._state in (S.STOPPING, S.STOPPED):
            raise ActorStopped(f"{what} not sent: the actor is stopped")
        box = self._mailbox
        if box is None:
            box = self._mailbox = deque()
        if len(box) >= MAILBOX_SIZE and any(c.abandoned for c in box):
            # Callers that gave up must not keep new ones out.
            box = self._mailbox = deque(c for c in box if not c.abandoned)
        if len(box) >= MAILBOX_SIZE:
            raise ActorBusy(f"{what} refused: {MAILBOX_SIZE} requests are already waiting")
        call = _Call(what, run, trio.current_time() + timeout)
        box.append(call)
        self._bell.ring()
        try:
            # The actor enforces the deadline itself and replies; the slack only guards
            # against an actor that cannot be interrupted.
            with trio.move_on_at(call.deadline + _REPLY_SLACK):
                await call.done.wait()
        finally:
            if not call.done.is_set():
                call.abandoned = True
        if not call.done.is_set():
            raise CallTimeout(
                f"{what}: no reply within {timeout:g} s", details={"started": call.started}
            )
        if call.error is not None:
            raise call.error
        return call.value

    async def _serve_mailbox(self, *, until_due: bool = True) -> None:
        """Answer the calls queued now. With ``until_due``, stop as soon as the actor's
        own next action is due: a steady stream of calls must not starve its schedule."""
        box = self._mailbox
        for _ in range(len(box or ())):
            if not box or (until_due and trio.current_time() >= self._due):
                return
            call = box.popleft()
            if call.abandoned:
                continue
            if trio.current_time() >= call.deadline:
                call.reply(
                    error=CallTimeout(
                        f"{call.what} expired in the queue", details={"started": False}
                    )
                )
                continue
            if not self._ready:
                retry = max(0.0, self._due - trio.current_time())
                call.reply(
                    error=ActorNotReady(
                        f"{call.what} refused: the device is {self._state.value}; "
                        f"next attempt in {retry:.1f} s",
                        details={"state": self._state.value, "retry_after": round(retry, 3)},
                    )
                )
                continue
            await self._execute(call)

    async def _execute(self, call: _Call) -> None:
        call.started = True
        try:
            with trio.move_on_at(call.deadline) as scope:
                try:
                    value = await call.run()
                except ActorCallError as exc:
                    call.reply(error=exc)
                    return
                except (Exception, BaseExceptionGroup) as raised:
                    cause = (
                        raised
                        if isinstance(raised, Exception)
                        else _errors_beside_cancellation(raised)
                    )
                    failure = CallFailed(
                        f"{call.what} failed: {_message(cause)}", details={"cause": _code(cause)}
                    )
                    failure.__cause__ = cause
                    self.actor.log.warning("%s failed: %s", call.what, cause)
                    call.reply(error=failure)
                    return
        except BaseException:
            # Interrupted by stop(), or by a push actor's run() ending: this call already
            # left the mailbox, so answer it here before unwinding.
            restarting = self._run_ended
            kind = ActorNotReady if restarting else ActorStopped
            why = "is restarting" if restarting else "is stopping"
            call.reply(
                error=kind(f"{call.what} interrupted: the actor {why}", details={"started": True})
            )
            raise
        if scope.cancelled_caught:
            call.reply(
                error=CallTimeout(f"{call.what} timed out while running", details={"started": True})
            )
        else:
            call.reply(value)

    async def _serve_mailbox_while_running(self) -> None:
        while True:
            await self._bell.wait()
            await self._serve_mailbox(until_due=False)

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
                error = _errors_beside_cancellation(group)
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
                for call in self._mailbox or ():
                    if not call.done.is_set():
                        call.reply(error=ActorStopped(f"{call.what} not run: the actor stopped"))
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
            self.actor._supervisor = None
            self._watchdog._supervisor = None
            self._mailbox = None

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

    def _emit_telemetry(
        self, batch: tuple[Reading, ...], device_id: str | None, observed_at: float | None
    ) -> None:
        self._readings += len(batch)
        if device_id is None or device_id == self.identity.device_id:
            self._last_readings, self._last_readings_at = batch, trio.current_time()
        self._deliver(
            self._sink.telemetry,
            TelemetryRecord(
                identity=self.identity,
                device_id=device_id or self.identity.device_id,
                readings=batch,
                observed_at=time.time() if observed_at is None else observed_at,
            ),
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


def _errors_beside_cancellation(group: BaseExceptionGroup[BaseException]) -> Exception:
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


def _timed_out_in(scope: trio.CancelScope, error: Exception | None) -> bool:
    """Whether a hook under ``scope`` ran out of time. A hook that returned is a success
    even if its deadline passed meanwhile (``cancel_called`` alone would say otherwise)."""
    return scope.cancelled_caught or (error is not None and scope.cancel_called)


def _timed_out(phase: str, timeout: float, raised: Exception | None) -> PollTimeout:
    error = PollTimeout(f"{phase}() did not finish within {timeout:g} s")
    error.__cause__ = raised
    return error


def _timings_for(cls: type[DeviceActor[Any]], config: Any) -> tuple[float, float]:
    """An actor's poll interval and poll timeout for ``config``."""
    interval = float(config.poll_interval_seconds or cls.poll_interval)
    timeout = cls.poll_timeout
    return interval, min(interval, _DEFAULT_POLL_TIMEOUT_CAP) if timeout is None else float(timeout)


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and not (timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")


def _message(error: BaseException) -> str:
    return error.message if isinstance(error, PiPhiError) else str(error) or type(error).__name__


def _code(error: BaseException) -> str:
    return error.code if isinstance(error, PiPhiError) else "actor_exception"
