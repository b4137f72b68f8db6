"""Shared test doubles: a scriptable probe actor, a gateway with children, a jitter-free
rng, a virtual-time waiter."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import trio
import trio.testing
from pydantic import Field

from runtime import CommandContext, DeviceActor, DeviceUnavailable, Reading, RuntimeConfig, command
from runtime._config import PollInterval
from runtime.lowlevel import ActorCallError
from runtime.testing import RecordingSink


class ProbeConfig(RuntimeConfig):
    """A device whose behaviour is scripted per call: ok | down | crash | hang | slow:<s>."""

    poll_interval_seconds: PollInterval = 1.0
    polls: list[str] = Field(default_factory=list)
    setups: list[str] = Field(default_factory=list)
    then: str = "ok"  # polls after the script; setups after theirs are ok


class Probe(DeviceActor[ProbeConfig]):
    """Records every hook call as (hook, trio time) and acts out its script."""

    poll_timeout = 0.5

    def __init__(self, config: ProbeConfig) -> None:
        super().__init__(config)
        self.calls: list[tuple[str, float]] = []
        self.polling = False
        self.overlapped = False
        self.cancelled_polls = 0

    def times(self, hook: str) -> list[float]:
        return [t for h, t in self.calls if h == hook]

    async def _act(self, hook: str, script: list[str], then: str) -> None:
        n = len(self.times(hook))
        self.calls.append((hook, trio.current_time()))
        step = script[n] if n < len(script) else then
        if step == "down":
            raise DeviceUnavailable(f"{hook} #{n}: no answer")
        if step == "crash":
            raise RuntimeError(f"{hook} #{n}: boom")
        if step == "hang":
            await trio.sleep_forever()
        if step.startswith("slow:"):
            await trio.sleep(float(step[5:]))

    async def setup(self) -> None:
        await self._act("setup", self.config.setups, "ok")

    async def poll(self) -> list[Reading]:
        assert not self.polling, "two polls of one device at once"
        self.polling = True
        try:
            await self._act("poll", self.config.polls, self.config.then)
        except trio.Cancelled:
            self.cancelled_polls += 1
            raise
        finally:
            self.polling = False
        return [Reading("n", len(self.times("poll")))]

    async def teardown(self) -> None:
        self.calls.append(("teardown", trio.current_time()))

    @command("echo")
    async def echo(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """Replies with its args after ``args["sleep"]`` seconds; records overlap with polls."""
        self.calls.append(("command", trio.current_time()))
        self.overlapped = self.overlapped or self.polling
        await trio.sleep(float(args.get("sleep", 0)))
        if args.get("fail"):
            raise ValueError("the device refused")
        return dict(args)


class PatientProbe(Probe):
    """A probe whose polls may run for a minute: for tests that keep a device busy."""

    poll_timeout = 60.0


async def attempt(call: Awaitable[Any]) -> Any:
    """Await a call to an actor; return its result, or the ActorCallError it raised."""
    try:
        return await call
    except ActorCallError as exc:
        return exc


class TopRandom(random.Random):
    """Full jitter at its ceiling: every uniform(a, b) returns b."""

    def random(self) -> float:
        return 1.0


#: Real seconds every other task must stay blocked before wait_until lets the virtual clock
#: move on: long enough for a loopback socket's answer or a short worker-thread call to
#: come back, so virtual time does not race past real I/O in flight.
SETTLE = 0.0005


async def wait_until(
    predicate: Callable[[], Any],
    *,
    timeout: float = 600.0,  # noqa: ASYNC109 - a test helper; virtual seconds
    step: float | None = None,
) -> None:
    """Wait until ``predicate()`` is true, at most ``timeout`` seconds of the trio clock.

    On the virtual clock (``autojump_clock``) this checks once per moment anything can
    change: when every other task has settled at the current instant, and again at the
    next deadline of any task, to which the clock then jumps. Polling every 10 ms of
    virtual time instead cost thousands of wake-ups per simulated minute. On the real clock
    it polls every ``step`` seconds (default 0.01), which is also the largest virtual jump
    when given."""
    with trio.fail_after(timeout):
        if not isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock):
            while not predicate():  # noqa: ASYNC110 - the predicates are plain attribute reads
                await trio.sleep(step or 0.01)
            return
        while not predicate():
            await trio.testing.wait_all_tasks_blocked(SETTLE)
            if predicate():
                return
            then = trio.lowlevel.current_statistics().seconds_to_next_deadline
            await trio.sleep(max(0.0, min(then, step or then)))


VENDOR_TIME = datetime(2026, 12, 7, 4, 11, 8, tzinfo=UTC)


class GatewayConfig(RuntimeConfig):
    poll_interval_seconds: float = 10.0
    children: list[str] = Field(default_factory=lambda: ["c1", "c2"])
    outages: int = 0  # run() attempts that fail at once (the gateway itself offline)
    own_heartbeat: bool = True  # report the gateway's own readings too


class Gateway(DeviceActor[GatewayConfig]):
    """A push gateway: every poll interval it reports each child that is not muted (and
    its own heartbeat), with the vendor's timestamp."""

    def __init__(self, config: GatewayConfig) -> None:
        super().__init__(config)
        self.muted: set[str] = set()
        self.runs = 0
        self.contexts: list[CommandContext] = []

    async def run(self) -> None:
        attempt, self.runs = self.runs, self.runs + 1
        if attempt < self.config.outages:
            raise DeviceUnavailable("gateway offline")
        tick = 0
        while True:
            for child in self.config.children:
                if child not in self.muted:
                    self.report(
                        [Reading("temperature_c", 20 + tick), Reading("battery", 90, "%")],
                        device_id=child,
                        timestamp=VENDOR_TIME + timedelta(seconds=tick),
                    )
            if self.config.own_heartbeat:
                self.report([Reading("connected", True)])
            tick += 1
            await trio.sleep(self.config.poll_interval_seconds or 10.0)

    @command("turn_on", idempotent=True)
    async def turn_on(self, args: Mapping[str, Any], ctx: CommandContext) -> dict[str, Any]:
        self.contexts.append(ctx)
        return {"device_id": ctx.device_id}

    @command("unpair")
    async def unpair(self, args: Mapping[str, Any], ctx: CommandContext) -> dict[str, bool]:
        return {"forgotten": self.forget_child(ctx.device_id)}

    @command("ping")
    async def ping(self, args: Mapping[str, Any]) -> str:
        return "pong"


class ThrottledSink(RecordingSink):
    """A sink whose ``admit()`` answers ``admitting`` (a runtime that cannot keep up)."""

    def __init__(self) -> None:
        super().__init__()
        self.admitting = True
        self.asked = 0

    def admit(self) -> bool:
        self.asked += 1
        return self.admitting
