"""The supervisor's behaviour, all on trio's virtual clock."""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import Field

from runtime import (
    ActorState,
    DeviceActor,
    DeviceUnavailable,
    Reading,
    RestartPolicy,
    RuntimeConfig,
    command,
)
from runtime._supervisor import DEFERRED_POLL_RETRY
from runtime.lowlevel import (
    ActorBusy,
    ActorNotReady,
    ActorNursery,
    ActorStopped,
    CallFailed,
    CallTimeout,
    RefreshUnsupported,
    UnknownCommand,
    open_actor_nursery,
)
from runtime.testing import RecordingSink

from .helpers import PatientProbe, Probe, ThrottledSink, TopRandom, attempt, wait_until


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 3) for a, b in itertools.pairwise(times)]


# -- backoff ------------------------------------------------------------------------------


async def test_backoff_doubles_from_the_initial_delay_up_to_the_cap(autojump_clock: Any) -> None:
    policy = RestartPolicy(initial_delay=1, max_delay=60, max_restarts=100)
    async with open_actor_nursery(RecordingSink(), rng=TopRandom()) as actors:
        sup = actors.spawn(Probe, {"id": "p", "setups": ["crash"] * 10}, policy=policy)
        await wait_until(lambda: len(sup.actor.times("setup")) == 11)
        assert sup.state is ActorState.RUNNING
    # TopRandom puts full jitter at its ceiling, so the waits are the ceilings themselves.
    assert gaps(sup.actor.times("setup")) == pytest.approx(
        [1, 2, 4, 8, 16, 32, 60, 60, 60, 60], abs=0.006
    )


async def test_backoff_waits_are_full_jitter_below_the_ceiling(autojump_clock: Any) -> None:
    policy = RestartPolicy(initial_delay=1, max_delay=8, max_restarts=100)
    async with open_actor_nursery(RecordingSink(), rng=random.Random(3)) as actors:
        sup = actors.spawn(Probe, {"id": "p", "setups": ["crash"] * 12}, policy=policy)
        await wait_until(lambda: len(sup.actor.times("setup")) == 13)
    waits = gaps(sup.actor.times("setup"))
    ceilings = [policy.ceiling(n) for n in range(12)]
    assert all(0 <= w <= c + 0.006 for w, c in zip(waits, ceilings, strict=True))
    assert len({round(w, 2) for w in waits}) > 6, "waits should be spread, not fixed"


async def test_backoff_resets_only_after_the_healthy_window(autojump_clock: Any) -> None:
    policy = RestartPolicy(initial_delay=1, max_delay=60, reset_after=30, max_restarts=100)
    crash_three_times = ["crash"] * 3
    async with open_actor_nursery(RecordingSink(), rng=TopRandom()) as actors:
        long_ok = actors.spawn(
            Probe,
            {"id": "long", "setups": crash_three_times, "polls": ["ok"] * 40 + ["crash"]},
            policy=policy,
        )
        short_ok = actors.spawn(
            Probe,
            {"id": "short", "setups": crash_three_times, "polls": ["ok"] * 10 + ["crash"]},
            policy=policy,
        )
        await wait_until(lambda: all(len(s.actor.times("setup")) == 5 for s in (long_ok, short_ok)))
    for sup, crashing_poll, expected_wait in ((long_ok, 40, 1.0), (short_ok, 10, 8.0)):
        crash_at = sup.actor.times("poll")[crashing_poll]
        resetup_at = sup.actor.times("setup")[4]
        # 40 healthy seconds >= reset_after: back to the initial delay. 10 s is not enough:
        # the fourth restart waits ceiling(3) = 8 s.
        assert resetup_at - crash_at == pytest.approx(expected_wait, abs=0.006), sup.identity.id


# -- restart intensity ------------------------------------------------------------------


async def test_too_many_restarts_mark_the_actor_failed_and_it_keeps_retrying_at_the_cap(
    autojump_clock: Any,
) -> None:
    sink = RecordingSink()
    async with open_actor_nursery(sink, rng=TopRandom()) as actors:
        flaky = actors.spawn(Probe, {"id": "flaky", "setups": ["crash"] * 9})
        sibling = actors.spawn(Probe, {"id": "sibling"})
        # Crashes at 0, 1, 3, 7, 15 s stay within the default 5-in-60 s; the 6th, at 31 s,
        # is one too many.
        await wait_until(lambda: flaky.state is ActorState.FAILED)
        health = flaky.health()
        assert health.restarts_total == 6
        assert health.restarts_in_window == 6
        assert health.last_error is not None and "boom" in health.last_error.message
        await wait_until(lambda: len(flaky.actor.times("setup")) == 10)
        assert flaky.state is ActorState.RUNNING
        assert sibling.state is ActorState.RUNNING
        sibling_polls = len(sibling.actor.times("poll"))
    setups = flaky.actor.times("setup")
    assert gaps(setups)[:5] == pytest.approx([1, 2, 4, 8, 16], abs=0.006)
    assert gaps(setups)[5:] == pytest.approx([60, 60, 60, 60], abs=0.006)
    # The sibling polled once a second throughout, failed neighbour or not.
    assert sibling_polls >= int(setups[-1]) - 1


async def test_a_failed_actor_that_recovers_and_stays_healthy_backs_off_normally_again(
    autojump_clock: Any,
) -> None:
    async with open_actor_nursery(RecordingSink(), rng=TopRandom()) as actors:
        sup = actors.spawn(
            Probe, {"id": "p", "setups": ["crash"] * 6, "polls": ["ok"] * 40 + ["crash"]}
        )
        await wait_until(lambda: sup.state is ActorState.FAILED)
        await wait_until(lambda: len(sup.actor.times("poll")) == 41)
        await wait_until(lambda: sup.state is not ActorState.RUNNING)
        # Healthy for 40 s >= reset_after, and the old restarts left the window.
        assert sup.state is ActorState.BACKOFF


# -- availability -------------------------------------------------------------------------


def expected_availability_events(script: list[str]) -> list[str]:
    events, down = [], False
    for step in script:
        if step == "down" and not down:
            events.append("device.unavailable")
        elif step == "ok" and down:
            events.append("device.available")
        down = step == "down"
    return events


async def test_one_unavailable_and_one_available_event_per_outage(
    actors: ActorNursery, autojump_clock: Any, sink: RecordingSink
) -> None:
    script = (
        ["ok"] * 3 + ["down"] * 6 + ["ok"] * 5 + ["down"] * 4 + ["ok"] * 5 + ["down"] + ["ok"] * 3
    )
    sup = actors.spawn(Probe, {"id": "p", "polls": script})
    await wait_until(lambda: len(sup.actor.times("poll")) == len(script))
    assert sink.event_types("p") == ["device.unavailable", "device.available"] * 3
    assert len(sup.actor.times("setup")) == 1, "unavailable must not tear the session down"
    assert sup.health().available


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from(["ok", "down"]), min_size=1, max_size=40))
def test_availability_events_alternate_and_match_the_outages(script: list[str]) -> None:
    sink = RecordingSink()

    async def main() -> None:
        async with open_actor_nursery(sink, rng=random.Random(0)) as actors:
            sup = actors.spawn(Probe, {"id": "p", "polls": script})
            # Each outage poll may back off up to the policy's 60 s cap.
            await wait_until(
                lambda: len(sup.actor.times("poll")) >= len(script) + 1,
                timeout=60.0 * (len(script) + 2),
            )

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert sink.event_types("p") == expected_availability_events([*script, "ok"])


async def test_unavailable_event_carries_the_reason_and_health_shows_it(
    actors: ActorNursery, autojump_clock: Any, sink: RecordingSink
) -> None:
    sup = actors.spawn(Probe, {"id": "p", "polls": ["down"] * 3})
    await wait_until(lambda: sup.state is ActorState.UNAVAILABLE)
    (event,) = sink.events("device.unavailable")
    assert event.severity == "warning"
    assert event.data["code"] == "device_unavailable"
    # `reason` says why in one word (issue 13); the error's own words are in `message`.
    assert event.data["reason"] == "offline"
    assert "no answer" in event.data["message"]
    assert event.data["hint"] == DeviceUnavailable.default_hint
    assert event.identity.config_id == "p"
    health = sup.health()
    assert not health.available
    assert health.consecutive_failures >= 1
    assert health.last_error is not None and health.last_error.phase == "poll"


async def test_setup_that_finds_the_device_offline_releases_it_and_is_retried(
    actors: ActorNursery, autojump_clock: Any, sink: RecordingSink
) -> None:
    sup = actors.spawn(Probe, {"id": "p", "setups": ["down", "down"]})
    await wait_until(lambda: len(sup.actor.times("poll")) >= 2)
    hooks = [h for h, _ in sup.actor.calls]
    # No session to keep yet: whatever setup() opened is released before each retry.
    assert hooks[:6] == ["setup", "teardown", "setup", "teardown", "setup", "poll"]
    assert sup.health().restarts_total == 0, "an offline device is not a crash"
    assert sink.event_types("p") == ["device.unavailable", "device.available"]


# -- timeouts and overruns ------------------------------------------------------------


async def test_a_hung_poll_is_cancelled_at_its_timeout_and_marks_the_device_unavailable(
    actors: ActorNursery, autojump_clock: Any, sink: RecordingSink
) -> None:
    sup = actors.spawn(Probe, {"id": "p", "polls": ["hang"]})
    await wait_until(lambda: sup.state is ActorState.UNAVAILABLE, step=0.001)
    started = sup.actor.times("poll")[0]
    assert trio.current_time() - started == pytest.approx(Probe.poll_timeout, abs=0.006)
    assert sup.actor.cancelled_polls == 1
    health = sup.health()
    assert health.last_error is not None and health.last_error.code == "poll_timeout"
    await wait_until(lambda: sup.state is ActorState.RUNNING)
    assert sink.event_types("p") == ["device.unavailable", "device.available"]


async def test_a_hung_setup_times_out_as_unavailable(
    actors: ActorNursery, autojump_clock: Any
) -> None:
    class SlowStart(Probe):
        setup_timeout = 3.0

    start = trio.current_time()
    sup = actors.spawn(SlowStart, {"id": "p", "setups": ["hang"]})
    await wait_until(lambda: sup.state is ActorState.UNAVAILABLE, step=0.001)
    assert trio.current_time() - start == pytest.approx(3.0, abs=0.006)
    await wait_until(lambda: len(sup.actor.times("poll")) >= 1)


async def test_ticks_missed_by_a_long_poll_are_skipped_and_counted_as_overruns(
    actors: ActorNursery, autojump_clock: Any
) -> None:

    sup = actors.spawn(PatientProbe, {"id": "p", "polls": ["slow:2.5"] * 3})
    await wait_until(lambda: len(sup.actor.times("poll")) == 6)
    # Each 2.5 s poll misses the ticks at +1 and +2; the next poll starts on the grid at +3.
    assert gaps(sup.actor.times("poll")) == pytest.approx([3, 3, 3, 1, 1], abs=0.006)
    assert sup.health().overruns == 6


async def test_polls_are_fixed_rate_and_first_polls_are_spread_over_one_interval(
    actors: ActorNursery, autojump_clock: Any
) -> None:
    fleet = [actors.spawn(Probe, {"id": f"d{i}", "pollIntervalSeconds": 2.0}) for i in range(200)]
    await wait_until(lambda: all(len(s.actor.times("poll")) >= 4 for s in fleet))
    firsts = sorted(s.actor.times("poll")[0] - s.actor.times("setup")[0] for s in fleet)
    assert 0 <= firsts[0] < 0.1 and 1.9 < firsts[-1] < 2.0 + 0.006
    # Uniform over the interval: no 5 ms scheduler slot holds more than a handful.
    assert max(Counter(round(f / 0.005) for f in firsts).values()) <= 5
    for sup in fleet:
        assert gaps(sup.actor.times("poll")[:4]) == pytest.approx([2, 2, 2], abs=0.006)


# -- isolation ----------------------------------------------------------------------------


def fleet_poll_times(*, with_trouble: bool) -> dict[str, list[float]]:
    async def main() -> dict[str, list[float]]:
        async with open_actor_nursery(RecordingSink(), rng=random.Random(7)) as actors:
            healthy = [actors.spawn(Probe, {"id": f"h{i}"}) for i in range(1000)]
            if with_trouble:
                crasher = actors.spawn(Probe, {"id": "crasher", "then": "crash"})
                hanger = actors.spawn(Probe, {"id": "hanger", "then": "hang"})
            await trio.sleep(30)
            if with_trouble:
                assert crasher.health().restarts_total >= 4
                assert hanger.state is ActorState.UNAVAILABLE
                assert hanger.actor.cancelled_polls >= 2
            return {s.identity.id: s.actor.times("poll") for s in healthy}

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_healthy_actors_poll_on_time_whatever_a_crashing_and_a_hanging_sibling_do() -> None:
    control = fleet_poll_times(with_trouble=False)
    troubled = fleet_poll_times(with_trouble=True)
    assert min(len(t) for t in control.values()) >= 29
    assert troubled == control


# -- sessions -----------------------------------------------------------------------------


async def test_a_crash_tears_down_and_sets_up_again_on_the_same_instance(
    actors: ActorNursery, autojump_clock: Any
) -> None:
    sup = actors.spawn(Probe, {"id": "p", "polls": ["ok", "down", "down", "ok", "crash", "ok"]})
    actor = sup.actor
    await wait_until(lambda: len(actor.times("poll")) == 7)
    assert sup.actor is actor
    hooks = [h for h, _ in actor.calls]
    # One session across the outage; the crash alone tears down, then setup on the same
    # instance (whose call log, instance state, survived).
    assert (
        hooks
        == ["setup", "poll", "poll", "poll", "poll", "poll", "teardown", "setup", "poll", "poll"][
            : len(hooks)
        ]
    )
    assert hooks.count("setup") == 2 and hooks.count("teardown") == 1


async def test_invalid_poll_results_are_crashes_with_a_clear_error(
    actors: ActorNursery, autojump_clock: Any
) -> None:
    class Sloppy(DeviceActor[RuntimeConfig]):
        poll_interval = 1.0

        async def poll(self) -> Any:
            return {"temperature": 21}

    class Repeats(DeviceActor[RuntimeConfig]):
        poll_interval = 1.0

        async def poll(self) -> list[Reading]:
            return [Reading("t", 1), Reading("t", 2)]

    sloppy = actors.spawn(Sloppy, {"id": "a"})
    repeats = actors.spawn(Repeats, {"id": "b"})
    await wait_until(lambda: sloppy.health().restarts_total and repeats.health().restarts_total)
    for sup, words in ((sloppy, "got dict"), (repeats, "'t' twice")):
        error = sup.health().last_error
        assert error is not None and error.code == "invalid_reading" and words in error.message


# -- commands and refreshes -------------------------------------------------------------


async def test_commands_and_refreshes_never_overlap_a_poll(
    actors: ActorNursery, autojump_clock: Any
) -> None:

    sup = actors.spawn(PatientProbe, {"id": "p", "polls": ["slow:0.4"] * 50})
    results: list[Any] = []

    async def client(n: int) -> None:
        await trio.sleep(n * 0.137)
        if n % 5 == 0:
            results.append(await sup.refresh())
        else:
            results.append(await sup.command("echo", {"n": n, "sleep": 0.05}))

    async with trio.open_nursery() as clients:
        for n in range(40):
            clients.start_soon(client, n)
    assert len(results) == 40
    assert not sup.actor.overlapped
    assert sum(1 for r in results if isinstance(r, dict)) == 32
    refreshes = [r for r in results if not isinstance(r, dict)]
    assert all(r.readings and r.readings[0].metric == "n" for r in refreshes)


async def test_a_refresh_delivers_telemetry_and_does_not_move_the_schedule(
    actors: ActorNursery, autojump_clock: Any, sink: RecordingSink
) -> None:
    sup = actors.spawn(Probe, {"id": "p", "pollIntervalSeconds": 10})
    await wait_until(lambda: len(sup.actor.times("poll")) == 1)
    due_before = sup.health().next_poll_due
    result = await sup.refresh()
    assert result.readings == (Reading("n", 2),)
    assert sink.telemetry_for("p")[-1].readings == result.readings
    due_after = sup.health().next_poll_due
    assert due_before is not None and due_after is not None
    assert abs((due_after - due_before).total_seconds()) < 0.001


async def test_command_errors_are_typed(actors: ActorNursery, autojump_clock: Any) -> None:
    sup = actors.spawn(Probe, {"id": "p"})
    assert await sup.command("echo", {"x": 1}) == {"x": 1}
    with pytest.raises(UnknownCommand) as unknown:
        await sup.command("explode")
    assert unknown.value.details["available"] == ["echo"]
    with pytest.raises(CallFailed) as failed:
        await sup.command("echo", {"fail": True})
    assert isinstance(failed.value.__cause__, ValueError)
    with pytest.raises(CallTimeout) as slow:
        await sup.command("echo", {"sleep": 5}, timeout=1)
    assert slow.value.details["started"] is True
    assert len(sup.actor.times("setup")) == 1, "a failed command is not an actor crash"
    with pytest.raises(ValueError, match="timeout"):
        await sup.command("echo", timeout=-1)


async def test_a_full_mailbox_refuses_at_once_and_queued_calls_expire(
    actors: ActorNursery, autojump_clock: Any
) -> None:

    sup = actors.spawn(PatientProbe, {"id": "p", "polls": ["slow:20"]})
    await wait_until(lambda: sup.actor.polling)
    outcomes: list[Any] = []

    async def send() -> None:
        outcomes.append(await attempt(sup.command("echo", timeout=5)))

    async with trio.open_nursery() as clients:
        for _ in range(20):
            clients.start_soon(send)
    busy = [o for o in outcomes if isinstance(o, ActorBusy)]
    expired = [o for o in outcomes if isinstance(o, CallTimeout)]
    assert len(busy) == 4 and len(expired) == 16
    assert busy[0].retryable
    assert all(e.details["started"] is False for e in expired)
    assert sup.actor.times("command") == [], "expired calls must not run late"


async def test_calls_wait_for_the_first_setup_but_are_refused_during_backoff(
    actors: ActorNursery, autojump_clock: Any
) -> None:
    start = trio.current_time()
    starting = actors.spawn(Probe, {"id": "slow", "setups": ["slow:2"]})
    assert await starting.command("echo", {"a": 1}) == {"a": 1}
    assert trio.current_time() - start == pytest.approx(2.0, abs=0.001)

    crashing = actors.spawn(Probe, {"id": "bad", "setups": ["crash", "crash"]})
    await wait_until(lambda: crashing.state is ActorState.BACKOFF)
    with pytest.raises(ActorNotReady) as refused:
        await crashing.command("echo")
    assert refused.value.details["state"] == "backoff"
    assert refused.value.details["retry_after"] > 0


async def test_calls_to_a_stopped_actor_are_refused(
    actors: ActorNursery, autojump_clock: Any
) -> None:
    sup = actors.spawn(Probe, {"id": "p"})
    await sup.stop()
    with pytest.raises(ActorStopped):
        await sup.command("echo")


async def test_calls_waiting_when_the_actor_stops_are_answered(
    actors: ActorNursery, autojump_clock: Any
) -> None:

    sup = actors.spawn(PatientProbe, {"id": "p", "polls": ["slow:20"]})
    await wait_until(lambda: sup.actor.polling)
    errors: list[Any] = []

    async def send() -> None:
        errors.append(await attempt(sup.command("echo", timeout=10)))

    async with trio.open_nursery() as clients:
        clients.start_soon(send)
        await trio.sleep(1)
        await sup.stop()
    assert [type(e) for e in errors] == [ActorStopped]


# -- stopping -----------------------------------------------------------------------------


async def test_stop_runs_teardown_within_the_grace_period_even_when_it_hangs(
    actors: ActorNursery, autojump_clock: Any
) -> None:
    class Stubborn(Probe):
        stop_timeout = 5.0

        async def teardown(self) -> None:
            await super().teardown()
            await trio.sleep_forever()

    sup = actors.spawn(Stubborn, {"id": "p", "polls": ["hang"]})
    await wait_until(lambda: sup.actor.polling)
    start = trio.current_time()
    await sup.stop()
    assert trio.current_time() - start == pytest.approx(5.0, abs=0.01)
    assert sup.state is ActorState.STOPPED
    assert len(sup.actor.times("teardown")) == 1
    health = sup.health()
    assert health.last_error is not None and health.last_error.code == "teardown_timeout"
    assert "p" not in actors


async def test_closing_the_nursery_tears_every_actor_down(
    sink: RecordingSink, autojump_clock: Any
) -> None:
    async with open_actor_nursery(sink) as actors:
        fleet = [actors.spawn(Probe, {"id": f"d{i}"}) for i in range(20)]
        await wait_until(lambda: all(s.actor.times("poll") for s in fleet))
    assert all(s.state is ActorState.STOPPED for s in fleet)
    assert all(len(s.actor.times("teardown")) == 1 for s in fleet)


async def test_stopping_during_backoff_does_not_tear_down_twice(
    actors: ActorNursery, autojump_clock: Any
) -> None:
    sup = actors.spawn(Probe, {"id": "p", "setups": ["crash", "crash"]})
    await wait_until(lambda: sup.state is ActorState.BACKOFF)
    await sup.stop()
    assert len(sup.actor.times("teardown")) == 1


# -- push actors ----------------------------------------------------------------------


class GatewayConfig(RuntimeConfig):
    outages: list[int] = Field(
        default_factory=list
    )  # run() attempts (0-based) that raise DeviceUnavailable


class Gateway(DeviceActor[GatewayConfig]):
    """Reports itself and a child sensor every second, with the vendor's timestamps."""

    def __init__(self, config: GatewayConfig) -> None:
        super().__init__(config)
        self.runs = 0

    async def run(self) -> None:
        attempt, self.runs = self.runs, self.runs + 1
        if attempt in self.config.outages:
            raise DeviceUnavailable("gateway offline")
        if attempt > 5:
            return  # a push actor whose run() returns is restarted
        while True:
            await trio.sleep(1)
            self.report([Reading("uptime_s", self.runs)])
            self.report(
                [Reading("temperature_c", 19.5, "C")],
                device_id="child-7",
                timestamp=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
            )


async def test_push_actors_report_for_themselves_and_their_children(
    actors: ActorNursery, autojump_clock: Any, sink: RecordingSink
) -> None:
    sup = actors.spawn(Gateway, {"id": "gw", "configId": "cfg-gw", "containerId": "c1"})
    await wait_until(lambda: len(sink.telemetry_for("child-7")) >= 3)
    own, child = sink.telemetry_for("gw")[0], sink.telemetry_for("child-7")[0]
    assert own.readings == (Reading("uptime_s", 1),)
    assert child.observed_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()
    assert child.identity.config_id == "cfg-gw" and child.identity.container_id == "c1"
    assert sup.health().readings >= 6
    with pytest.raises(RefreshUnsupported):
        await sup.refresh()


async def test_push_actor_outage_is_one_event_pair_and_run_is_retried_in_the_same_session(
    actors: ActorNursery, autojump_clock: Any, sink: RecordingSink
) -> None:
    sup = actors.spawn(Gateway, {"id": "gw", "outages": [0, 1, 2]})
    await wait_until(lambda: sink.telemetry_for("gw"))
    assert sink.event_types("gw") == ["device.unavailable", "device.available"]
    assert sup.state is ActorState.RUNNING
    assert sup.actor.runs == 4


async def test_commands_run_while_a_push_actor_receives(
    actors: ActorNursery, autojump_clock: Any
) -> None:
    class Switch(Gateway):
        @command("ping")
        async def ping(self, args: Any) -> str:
            return "pong"

    sup = actors.spawn(Switch, {"id": "sw"})
    await trio.sleep(2.5)
    assert await sup.command("ping") == "pong"
    assert sup.actor.runs == 1, "a command must not disturb run()"


async def test_a_push_actor_whose_run_returns_is_restarted(
    actors: ActorNursery, autojump_clock: Any
) -> None:
    sup = actors.spawn(Gateway, {"id": "gw", "outages": [0, 1, 2, 3, 4, 5]})
    await wait_until(lambda: sup.health().restarts_total >= 1)
    error = sup.health().last_error
    assert error is not None and error.code == "actor_crashed" and "returned" in error.message


# -- output and health ------------------------------------------------------------------


async def test_events_and_state_published_by_an_actor_carry_its_identities(
    actors: ActorNursery, autojump_clock: Any, sink: RecordingSink
) -> None:
    class Chatty(DeviceActor[RuntimeConfig]):
        poll_interval = 1.0

        async def poll(self) -> list[Reading]:
            self.publish_state({"mode": "eco"})
            self.emit_event("thermostat.mode_changed", {"mode": "eco"}, severity="info")
            return []

    sup = actors.spawn(
        Chatty, {"id": "t1", "config_id": "cfg-1", "device_id": "dev-1", "integrationId": "int-9"}
    )
    await wait_until(lambda: sink.events("thermostat.mode_changed"))
    event = sink.events("thermostat.mode_changed")[0]
    assert (event.device_id, event.identity.config_id, event.identity.integration_id) == (
        "dev-1",
        "cfg-1",
        "int-9",
    )
    assert event.source == "Chatty" and len(event.event_id) == 32
    state, updated = sup.published_state()
    assert state == {"mode": "eco"} and updated is not None
    assert sink.telemetry_count == 0, "an empty poll result sends no payload"


async def test_health_snapshot_has_timings_and_serialises(
    actors: ActorNursery, autojump_clock: Any
) -> None:

    durations = [0.1 * (i + 1) for i in range(10)]
    sup = actors.spawn(PatientProbe, {"id": "p", "polls": [f"slow:{d:.1f}" for d in durations]})
    await wait_until(lambda: len(sup.actor.times("poll")) == 11)
    health = sup.health()
    assert health.polls >= 10 and health.readings == health.polls
    assert health.poll_duration_p50 == pytest.approx(0.5, abs=0.006)
    assert health.poll_duration_p95 == pytest.approx(1.0, abs=0.006)
    assert health.next_poll_due is not None and health.last_poll_started is not None
    assert health.state_since <= datetime.now(UTC)
    body = json.loads(json.dumps(health.to_dict()))
    assert body["state"] == "running" and body["actor"] == "PatientProbe"
    with pytest.raises(AttributeError):
        health.polls = 0  # type: ignore[misc]


async def test_a_running_actor_shows_no_error_and_counts_its_readings(
    actors: ActorNursery, autojump_clock: Any
) -> None:
    sup = actors.spawn(Probe, {"id": "p"})
    await wait_until(lambda: len(sup.actor.times("poll")) == 5)
    health = sup.health()
    assert (health.state, health.last_error, health.restarts_total, health.overruns) == (
        ActorState.RUNNING,
        None,
        0,
        0,
    )
    assert health.readings == 5


async def test_a_command_cut_short_by_stop_is_answered(
    actors: ActorNursery, autojump_clock: Any
) -> None:
    sup = actors.spawn(Probe, {"id": "p"})
    errors: list[Any] = []

    async def send() -> None:
        errors.append(await attempt(sup.command("echo", {"sleep": 8}, timeout=9)))

    async with trio.open_nursery() as clients:
        clients.start_soon(send)
        await wait_until(lambda: sup.actor.times("command"))
        start = trio.current_time()
        await sup.stop()
    assert trio.current_time() - start < 0.1, "the caller must not wait out its deadline"
    assert [type(e) for e in errors] == [ActorStopped]
    assert errors[0].details["started"] is True


async def test_a_command_cut_short_by_a_push_actor_restart_is_answered(
    actors: ActorNursery, autojump_clock: Any
) -> None:
    class Fragile(DeviceActor[RuntimeConfig]):
        async def run(self) -> None:
            await trio.sleep(1)
            raise RuntimeError("stream broke")

        @command("slow")
        async def slow(self, args: Any) -> None:
            await trio.sleep(30)

    sup = actors.spawn(Fragile, {"id": "f"})
    with pytest.raises(ActorNotReady, match="restarting") as info:
        await sup.command("slow", timeout=60)
    assert info.value.details["started"] is True
    assert trio.current_time() < 5


class Messy(DeviceActor[RuntimeConfig]):
    """Its poll runs a nursery whose child raises when cancelled: the hook then raises
    BaseExceptionGroup([Cancelled, RuntimeError]), which `except Exception` misses."""

    poll_interval = 1.0
    poll_timeout = 0.5

    async def poll(self) -> list[Reading]:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._reader)
            await trio.sleep_forever()
        return []  # pragma: no cover

    async def _reader(self) -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            raise RuntimeError("reader closed while cancelled") from None

    async def teardown(self) -> None:
        await self._reader()  # raises the same way when the grace period cancels it


async def test_errors_raised_alongside_a_cancellation_stay_inside_the_actor(
    actors: ActorNursery, autojump_clock: Any
) -> None:
    class MessyTeardown(Messy):
        stop_timeout = 1.0

    messy = actors.spawn(MessyTeardown, {"id": "messy"})
    sibling = actors.spawn(Probe, {"id": "sibling"})
    await wait_until(lambda: messy.state is ActorState.UNAVAILABLE)
    error = messy.health().last_error
    assert error is not None and error.code == "poll_timeout"
    await trio.sleep(10)
    assert len(sibling.actor.times("poll")) >= 10
    await messy.stop()  # cancelled mid-poll, and teardown raises the same way
    assert messy.state is ActorState.STOPPED
    assert sibling.state is ActorState.RUNNING


# -- found in review ----------------------------------------------------------------------


async def test_a_sink_that_raises_loses_the_record_but_no_actor(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    class BrokenSink(RecordingSink):
        def telemetry(self, record: Any) -> None:
            raise OSError("disk full")

    async with open_actor_nursery(BrokenSink()) as actors:
        sup = actors.spawn(Probe, {"id": "p"})
        await wait_until(lambda: len(sup.actor.times("poll")) >= 5)
        assert sup.state is ActorState.RUNNING and sup.health().restarts_total == 0
    assert any("the sink refused a record from p" in r.getMessage() for r in caplog.records)


async def test_a_steady_stream_of_commands_does_not_starve_polling(
    actors: ActorNursery, autojump_clock: Any
) -> None:
    sup = actors.spawn(Probe, {"id": "p"})
    await wait_until(lambda: sup.actor.times("poll"))

    async def client() -> None:
        while True:
            await sup.command("echo", {"sleep": 0.2})

    async with trio.open_nursery() as clients:
        for _ in range(4):
            clients.start_soon(client)
        start = trio.current_time()
        await trio.sleep(20)
        clients.cancel_scope.cancel()
    polls = [t for t in sup.actor.times("poll") if t >= start]
    assert len(polls) >= 18, "polls must keep their schedule under a stream of commands"
    assert len(sup.actor.times("command")) > 50


async def test_stopping_a_push_actor_mid_command_during_an_outage_says_stopped(
    actors: ActorNursery, autojump_clock: Any
) -> None:
    class Switch(Gateway):
        @command("slow")
        async def slow(self, args: Any) -> None:
            await trio.sleep(5)

    sup = actors.spawn(Switch, {"id": "sw", "outages": [0, 1, 2, 3]})
    await wait_until(lambda: sup.state is ActorState.UNAVAILABLE)
    errors: list[Any] = []

    async def send() -> None:
        errors.append(await attempt(sup.command("slow", timeout=30)))

    async with trio.open_nursery() as clients:
        clients.start_soon(send)
        await trio.sleep(0.5)
        await sup.stop()
    assert [type(e) for e in errors] == [ActorStopped]


async def test_push_retries_during_an_outage_keep_backing_off(autojump_clock: Any) -> None:
    class Silent(DeviceActor[RuntimeConfig]):
        """Waits 40 s for data that never comes, then reports the device unavailable."""

        def __init__(self, config: RuntimeConfig) -> None:
            super().__init__(config)
            self.ends: list[float] = []
            self.starts: list[float] = []

        async def run(self) -> None:
            self.starts.append(trio.current_time())
            await trio.sleep(40)
            self.ends.append(trio.current_time())
            raise DeviceUnavailable("no data for 40 s")

    async with open_actor_nursery(RecordingSink(), rng=TopRandom()) as actors:
        sup = actors.spawn(Silent, {"id": "s"})
        await wait_until(lambda: len(sup.actor.starts) == 5)
    waits = [round(b - a, 2) for a, b in zip(sup.actor.ends, sup.actor.starts[1:], strict=False)]
    # 40 s inside run() is not 40 s of health: the backoff grows instead of resetting.
    assert waits == pytest.approx([1, 2, 4, 8], abs=0.006)


async def test_refreshes_during_an_outage_do_not_defer_the_scheduled_retry(
    actors: ActorNursery, autojump_clock: Any
) -> None:
    sup = actors.spawn(Probe, {"id": "p", "polls": ["ok", "down"], "then": "down"})
    await wait_until(lambda: sup.state is ActorState.UNAVAILABLE)
    due = sup.health().next_poll_due
    for _ in range(3):
        with pytest.raises(CallFailed) as failed:
            await sup.refresh()
        assert failed.value.details["cause"] == "device_unavailable"
    after = sup.health().next_poll_due
    assert due is not None and after is not None
    # Both are wall-clock renderings of trio times, taken at slightly different real
    # moments; a deferred retry would be seconds off, not milliseconds.
    assert abs((after - due).total_seconds()) < 0.05


async def test_a_refresh_that_finds_the_device_back_resumes_the_schedule(
    actors: ActorNursery, autojump_clock: Any
) -> None:
    policy = RestartPolicy(initial_delay=50, max_delay=60, max_restarts=100)
    async with open_actor_nursery(RecordingSink(), rng=TopRandom()) as own:
        sup = own.spawn(Probe, {"id": "p", "polls": ["ok", "down", "ok"]}, policy=policy)
        await wait_until(lambda: sup.state is ActorState.UNAVAILABLE)
        await sup.refresh()  # the third poll: ok
        assert sup.state is ActorState.RUNNING
        polls_before = len(sup.actor.times("poll"))
        await trio.sleep(3)
        assert len(sup.actor.times("poll")) >= polls_before + 2, "not 50 s of backoff"


async def test_callers_that_gave_up_do_not_keep_new_ones_out(
    actors: ActorNursery, autojump_clock: Any
) -> None:

    sup = actors.spawn(PatientProbe, {"id": "p", "polls": ["slow:50"]})
    await wait_until(lambda: sup.actor.polling)

    async def impatient() -> None:
        with pytest.raises(CallTimeout):
            await sup.command("echo", timeout=1)

    async with trio.open_nursery() as clients:
        for _ in range(16):
            clients.start_soon(impatient)
    # All sixteen gave up; a seventeenth is queued, not refused, and answered after the poll.
    assert await sup.command("echo", {"late": True}, timeout=60) == {"late": True}


async def test_polls_wait_while_the_sink_cannot_keep_up_and_commands_are_served(
    autojump_clock: Any,
) -> None:
    sink = ThrottledSink()
    async with open_actor_nursery(sink) as actors:
        sup = actors.spawn(Probe, {"id": "p"})  # polls at 1 Hz
        await wait_until(lambda: len(sup.actor.times("poll")) >= 3)
        sink.admitting = False
        await trio.sleep(0.01)  # a poll in progress ends
        polls, asked = len(sup.actor.times("poll")), sink.asked
        await trio.sleep(10)
        assert len(sup.actor.times("poll")) <= polls + 1  # one may have been admitted already
        assert sink.asked - asked >= 15, "asked again about every DEFERRED_POLL_RETRY"
        assert await sup.command("echo", {"x": 1}) == {"x": 1}, "commands are not deferred"
        assert sup.state is ActorState.RUNNING
        sink.admitting = True
        start, held = trio.current_time(), len(sup.actor.times("poll"))
        await wait_until(lambda: len(sup.actor.times("poll")) > held)
        assert sup.actor.times("poll")[-1] - start <= DEFERRED_POLL_RETRY + 0.01


async def test_polls_put_off_together_go_back_to_their_own_ticks(autojump_clock: Any) -> None:
    # Released at once, a fleet must not poll in lockstep from then on: each goes back to
    # its own tick, and the ticks it missed count as overruns.
    sink = ThrottledSink()
    interval = 10.0
    async with open_actor_nursery(sink) as actors:
        sups = [
            actors.spawn(Probe, {"id": f"p{n}", "poll_interval_seconds": interval})
            for n in range(20)
        ]
        await wait_until(lambda: all(len(s.actor.times("poll")) >= 2 for s in sups))
        phases = {s: s.actor.times("poll")[-1] % interval for s in sups}
        sink.admitting = False
        await trio.sleep(35)
        sink.admitting = True
        released = trio.current_time()
        await trio.sleep(2 * interval)
        for sup in sups:
            after = [t for t in sup.actor.times("poll") if t > released + DEFERRED_POLL_RETRY]
            assert after, "polling resumed"
            off = (after[-1] - phases[sup]) % interval
            assert min(off, interval - off) < 0.01, "back on its own tick"
            assert sup.health().overruns >= 2  # ticks missed while put off
        spread = sorted(phases.values())
        assert spread[-1] - spread[0] > interval / 2, "the fleet was spread to begin with"


async def test_a_sink_without_admit_admits_every_poll(autojump_clock: Any) -> None:
    class OldSink:  # written before Sink.admit existed
        def __init__(self) -> None:
            self.count = 0

        def telemetry(self, record: Any) -> None:
            self.count += 1

        def event(self, record: Any) -> None:
            pass

    sink = OldSink()
    async with open_actor_nursery(sink) as actors:  # type: ignore[arg-type]
        sup = actors.spawn(Probe, {"id": "p"})
        await wait_until(lambda: len(sup.actor.times("poll")) >= 3)
    assert sup.health().overruns == 0
