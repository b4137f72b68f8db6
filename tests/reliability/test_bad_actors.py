"""Crash-looping, hanging and flapping devices beside healthy ones, in one runtime process."""

from __future__ import annotations

import pytest
import trio

from tests.helpers import wait_until
from tests.reliability._procs import (
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

INTERVAL = 0.2
WINDOW = 6.0
HEALTHY = [device(n, interval=INTERVAL) for n in range(6)]
CRASH_LOOP = device(10, interval=INTERVAL, crash_every=1)  # every poll raises
CRASHY = device(11, interval=INTERVAL, crash_every=2)  # every other poll raises
HANG = device(12, interval=0.5, slow_every=1, slow_seconds=3600)  # every poll hangs
FLAPPING = device(13, interval=INTERVAL, offline_every=4, offline_for=2)
BAD = [CRASH_LOOP, CRASHY, HANG, FLAPPING]


async def test_bad_devices_never_hold_up_healthy_ones(core: LiveCore, rt: LiveRuntime) -> None:
    configs = HEALTHY + BAD
    healthy = {c["config_id"] for c in HEALTHY}
    await start_devices(rt, core, configs, delivering=[c["id"] for c in HEALTHY])
    start = trio.current_time()
    before = core.readings_per_config()
    async with watching_health(rt) as samples:
        await wait_until(lambda: trio.current_time() - start >= WINDOW, timeout=WINDOW + 1)
    during = core.readings_per_config() - before
    lasted = trio.current_time() - start
    slowest = assert_responsive(samples)
    assert {s.status for s in samples} <= {"ok", "degraded"}

    # Healthy devices delivered at their rate all along.
    nominal = lasted / INTERVAL
    for config_id in sorted(healthy):
        assert during[config_id] >= 0.75 * nominal, (config_id, during[config_id], nominal)
    assert during[CRASH_LOOP["config_id"]] == 0
    assert during[HANG["config_id"]] == 0

    diagnostics = await rt.diagnostics()
    actors = {a["config_id"]: a for a in diagnostics["actors"]}
    for config_id in healthy:
        actor = actors[config_id]
        assert actor["state"] == "running", actor
        assert actor["restarts_total"] == 0 and actor["last_error"] is None, actor
    loop = actors[CRASH_LOOP["config_id"]]
    assert loop["restarts_total"] >= 2, loop
    assert "simulated crash" in loop["last_error"]["message"], loop
    assert loop["last_error"]["phase"] == "poll"
    assert actors[CRASHY["config_id"]]["restarts_total"] >= 2
    hang = actors[HANG["config_id"]]
    assert hang["state"] == "unavailable" and hang["consecutive_failures"] >= 2, hang
    assert hang["readings"] == 0, hang

    # The crash-looping device is seen backing off (or failed); the state filter lists
    # the healthy devices as running, never the hanging one.
    await rt.wait_for(
        lambda d: (
            {a["config_id"]: a["state"] for a in d["actors"]}[CRASH_LOOP["config_id"]]
            in ("backoff", "failed")
        ),
        timeout=5,
        what="the crash-looping device backing off",
    )
    running = await rt.http.get("/diagnostics", params={"state": "running"})
    found = {a["config_id"] for a in running.json()["diagnostics"]["actors"]}
    assert healthy <= found and HANG["config_id"] not in found, found

    final, dups = await drain_and_account(rt, core, configs)

    flapping = {e["type"] for e in core.events() if e["config_id"] == FLAPPING["config_id"]}
    assert {"device.unavailable", "device.available"} <= flapping, flapping
    report(
        "bad actors",
        accepted=final["delivery"]["accepted"],
        healthy_delivered_min=min(during[c] for c in healthy),
        nominal=round(nominal, 1),
        crash_loop_restarts=loop["restarts_total"],
        hang_failures=hang["consecutive_failures"],
        slowest_health_s=round(slowest, 3),
        duplicates=sum(n - 1 for n in dups.values()),
    )
