"""Core answers, but badly: 500/503 storms (with and without Retry-After) and slow answers."""

from __future__ import annotations

import pytest
import trio

from tests.helpers import wait_until
from tests.reliability._procs import (
    CLIENT_TIMEOUT,
    LANES,
    RETRY_CAP,
    HealthSample,
    LiveCore,
    LiveRuntime,
    assert_responsive,
    device,
    drain_and_account,
    report,
    start_devices,
    watching_health,
)

pytestmark = pytest.mark.slow  # a real process: make test runs it, -m "not slow" skips it

DEVICES = 9
INTERVAL = 0.2
STORM = 3.0


async def _storm(
    rt: LiveRuntime,
    core: LiveCore,
    samples: list[HealthSample],
    status: int,
    retry_after: float | None,
) -> tuple[int, float]:
    """Core answers ``status`` for STORM seconds, then 200 again; returns the attempts
    Core saw during the storm and how long delivery took to resume after it."""
    core.status = status
    core.headers = [("Retry-After", f"{retry_after:g}")] if retry_after else []
    started, requests = trio.current_time(), core.requests
    seen = await rt.wait_for(
        lambda d: d["delivery"]["link"]["state"] == "down", timeout=5, what=f"link down on {status}"
    )
    noticed = trio.current_time()
    assert seen["delivery"]["link"]["last_error"]["code"] == "core_server_error"
    await wait_until(lambda: trio.current_time() - started >= STORM, timeout=STORM + 1)
    attempts, lasted = core.requests - requests, trio.current_time() - started
    core.status, core.headers = 200, []
    links = {
        s.link for s in samples if noticed <= s.at and s.at + (s.latency or 0) < started + lasted
    }
    assert links == {"down"}, f"/health during the {status} storm said {links}"
    if retry_after:
        # Never sooner than Retry-After. A lane's first exchange in the storm may come at any
        # time and, pipelined behind the backlog of the storm before, carry one request per
        # device; every later one is the lane's head alone, retry_after after the one before.
        assert attempts <= DEVICES + LANES * (lasted // retry_after), (attempts, lasted)
    stored, recovered = len(core.stored), trio.current_time()
    await wait_until(lambda: len(core.stored) > stored, timeout=RETRY_CAP + 2)
    resumed_after = trio.current_time() - recovered
    await rt.wait_for(lambda d: d["delivery"]["link"]["state"] == "up", timeout=10, what="link up")
    assert (await rt.health()).link == "up"
    return attempts, resumed_after


async def test_500_and_503_storms_lose_nothing(core: LiveCore, rt: LiveRuntime) -> None:
    configs = [device(n, interval=INTERVAL) for n in range(DEVICES)]
    storms: dict[str, float] = {}
    await start_devices(rt, core, configs)
    async with watching_health(rt) as samples:
        for status, retry_after in ((500, None), (503, None), (503, 1.5)):
            name = f"{status}{'+retry_after' if retry_after else ''}"
            attempts, resumed_after = await _storm(rt, core, samples, status, retry_after)
            storms[f"{name}_attempts"] = attempts
            storms[f"{name}_resumed_after_s"] = round(resumed_after, 2)
    slowest = assert_responsive(samples)
    final, dups = await drain_and_account(rt, core, configs)
    assert final["delivery"]["retried"] > 0
    report(
        "storms",
        accepted=final["delivery"]["accepted"],
        retried=final["delivery"]["retried"],
        slowest_health_s=round(slowest, 3),
        duplicates=sum(n - 1 for n in dups.values()),
        **storms,
    )


async def test_a_slow_core_loses_nothing_and_polls_never_wait(
    core: LiveCore, rt: LiveRuntime
) -> None:
    configs = [device(n, interval=INTERVAL) for n in range(DEVICES)]
    await start_devices(rt, core, configs)
    before = {a["config_id"]: a["polls"] for a in (await rt.diagnostics())["actors"]}
    async with watching_health(rt) as samples:
        # Slower than the client's timeout: every request is cut off mid-flight.
        core.delay = CLIENT_TIMEOUT + 1.5
        cut_from = trio.current_time()
        await rt.wait_for(
            lambda d: (d["delivery"]["link"]["last_error"] or {}).get("code") == "core_timeout",
            timeout=CLIENT_TIMEOUT + 10,
            what="a delivery timed out",
        )
        # Merely slow: each answer takes a second, well within the timeout.
        core.delay = 1.0
        slow_from = trio.current_time()
        await rt.wait_for(
            lambda d: d["delivery"]["link"]["state"] == "up",
            timeout=RETRY_CAP + CLIENT_TIMEOUT + 3,
            what="link up with a slow Core",
        )
        await wait_until(
            lambda: sum(at >= slow_from for _, at in core.stored) >= 2 * LANES,
            timeout=15,
            step=0.1,
        )
        core.delay = 0.0
        slow_for = trio.current_time() - cut_from
    after = await rt.diagnostics()
    slowest = assert_responsive(samples)
    # Actors never wait for delivery: every device kept its poll rate throughout.
    nominal = slow_for / INTERVAL
    polled = {a["config_id"]: a["polls"] - before[a["config_id"]] for a in after["actors"]}
    for actor in after["actors"]:
        assert polled[actor["config_id"]] >= 0.7 * nominal, (actor, nominal)
        assert actor["state"] == "running", actor
    final, dups = await drain_and_account(rt, core, configs)
    # A request cut off mid-flight is resent with the same id (README, Delivery: "so Core
    # can recognise a redelivery"); only those requests may have been stored twice.
    assert dups, "requests cut off by the timeout were stored by Core and must be resent"
    first_sent: dict[str, float] = {}
    for item, arrived in core.stored:
        first_sent[item] = min(arrived, first_sent.get(item, arrived))
    late = {i: first_sent[i] - cut_from for i in dups if not cut_from <= first_sent[i] < slow_from}
    assert not late, f"duplicates from requests outside the over-timeout phase: {late}"
    report(
        "slow",
        accepted=final["delivery"]["accepted"],
        slow_for_s=round(slow_for, 1),
        polls_min_of_nominal=round(min(polled.values()) / nominal, 2),
        slowest_health_s=round(slowest, 3),
        duplicates=sum(n - 1 for n in dups.values()),
    )
