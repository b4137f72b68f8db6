"""Core goes away (connections refused) for a few seconds and comes back."""

from __future__ import annotations

import time
from datetime import datetime

import pytest
import trio

from tests.helpers import wait_until
from tests.reliability._procs import (
    RETRY_CAP,
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

DEVICES = 12
OUTAGE = 3.0
INTERVAL = 0.2
NOTICED_WITHIN = 1.0
"""Seconds: with readings every 17 ms, the first one after the outage meets it at once."""


async def test_an_outage_loses_nothing_and_delivery_resumes(
    core: LiveCore, rt: LiveRuntime
) -> None:
    configs = [device(n, interval=INTERVAL) for n in range(DEVICES)]
    ids = {c["id"] for c in configs}
    await start_devices(rt, core, configs)
    assert (await rt.health()).link == "up"

    await core.down()
    down_at, down_wall = trio.current_time(), time.time()
    async with watching_health(rt) as during:
        await wait_until(lambda: trio.current_time() - down_at >= OUTAGE, timeout=OUTAGE + 1)
    up_wall = time.time()
    outage = await rt.diagnostics()
    await core.up()
    up_at, stored_before = trio.current_time(), len(core.stored)

    # /health shows the link down within a second of the outage, and down until its end.
    assert_responsive(during)
    settled_in = [s for s in during if s.at >= down_at + NOTICED_WITHIN]
    assert {s.link for s in settled_in} == {"down"}, [(s.at - down_at, s.link) for s in during]
    assert {s.status for s in settled_in} == {"degraded"}
    assert outage["delivery"]["link"]["last_error"]["code"] == "core_unavailable"
    assert outage["delivery"]["spool_depth"] > 0, "readings made during the outage spool"

    # Delivery resumes: never later than the longest retry wait (plus slack).
    await wait_until(lambda: len(core.stored) > stored_before, timeout=RETRY_CAP + 2)
    resumed_after = trio.current_time() - up_at
    await rt.wait_for(
        lambda d: d["runtime"]["core_link"]["state"] == "up", timeout=5, what="link up"
    )
    assert (await rt.health()).link == "up"
    final, dups = await drain_and_account(rt, core, configs)

    # Each device's readings made during the outage reached Core afterwards.
    for device_id in sorted(ids):
        made = [
            datetime.fromisoformat(b["timestamp"]).timestamp()
            for b in core.readings_of(device_id).values()
        ]
        kept = sum(down_wall + 0.5 < t < up_wall - 0.5 for t in made)
        assert kept >= (OUTAGE - 1) / INTERVAL * 0.5, (device_id, kept)
    report(
        "outage",
        accepted=final["delivery"]["accepted"],
        spooled=final["delivery"]["spooled"],
        resumed_after_s=round(resumed_after, 2),
        slowest_health_s=round(assert_responsive(during), 3),
        duplicates=sum(n - 1 for n in dups.values()),
    )
