"""``kill -9`` under load, with Core up, down and slow, in both durability modes: every
reading lost is one made within the documented window before the kill (README, Delivery
to Core, "Durability windows").

A fleet of sequence-numbered devices (tests/reliability/seqfleet.py) reports to Core
through ``piphi-runtime serve`` (durability from ``PIPHI_DURABILITY``). Core is put in
trouble, the runtime is killed with SIGKILL, Core is made well and the runtime restarted
on the same state directory, which delivers its spool. Then, per device, every reading of
the killed process missing at Core (a hole between two that arrived, or the tail after
the last that did) must have been made less than ``WINDOW[durability]`` seconds before
the kill.
"""

from __future__ import annotations

import itertools
import signal
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.helpers import wait_until
from tests.reliability._procs import (
    CONTAINER,
    LiveCore,
    live_runtime,
    report,
    runtime_env,
    spooled_ids,
)

pytestmark = pytest.mark.slow  # a real process: make test runs it, -m "not slow" skips it

TARGET = "tests.reliability.seqfleet:integration"
DEVICES = 40
INTERVAL = 0.1
"""40 devices at the shortest poll interval (MIN_POLL_INTERVAL): 400 readings a second."""
TROUBLE = 3.0
"""Seconds of trouble (or of plain load, with Core up) before the kill."""
SLOW = 3.0
#: The documented windows (README, "Durability windows"), with the scheduling slack a
#: shared 2-core machine needs: memory_window (1 s) plus the writer's batch for
#: ``memory``, the batch being committed for ``write_ahead``.
WINDOW = {"memory": 2.0, "write_ahead": 0.5}


def _fleet() -> list[dict[str, Any]]:
    return [
        {"id": f"seq-{n}", "config_id": f"cfg-seq-{n}", "poll_interval_seconds": INTERVAL}
        for n in range(DEVICES)
    ]


def _readings_of(core: LiveCore, run: int) -> dict[str, dict[int, float]]:
    """device id -> {seq: unix time it was read}, for the readings of process ``run``."""
    found: dict[str, dict[int, float]] = defaultdict(dict)
    for body in core.telemetry():
        metrics = body["metrics"]
        if metrics.get("run") == run:
            when = datetime.fromisoformat(body["timestamp"]).timestamp()
            found[body["device_id"]][metrics["seq"]] = when
    return found


def _holes(readings: dict[str, dict[int, float]], killed_at: float) -> list[float]:
    """For each run of missing readings (between two that arrived, or after the last),
    how long before the kill its first one was made (at most: the reading before it was
    made then, one interval earlier)."""
    ages = []
    for seqs in readings.values():
        ordered = sorted(seqs)
        for before, after in itertools.pairwise(ordered):
            if after != before + 1:
                ages.append(killed_at - seqs[before] - INTERVAL)
        ages.append(killed_at - seqs[ordered[-1]] - INTERVAL)  # the tail
    return ages


@pytest.mark.parametrize("trouble", ["up", "down", "slow"])
@pytest.mark.parametrize("durability", ["memory", "write_ahead"])
async def test_kill_9_loses_only_the_documented_window(
    durability: str, trouble: str, core: LiveCore, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    env = {
        **runtime_env(core, state),
        "PIPHI_DURABILITY": durability,
        "PIPHI_CONTAINER_ID": CONTAINER,  # the restart delivers before Core calls it
    }
    log = tmp_path / "runtime.log"
    devices = _fleet()

    async with live_runtime(env, log, target=TARGET) as rt:
        pid = rt.proc.pid
        await rt.sync(devices)
        await wait_until(lambda: len(_readings_of(core, pid)) == DEVICES, timeout=15, step=0.1)
        diagnostics = await rt.diagnostics()
        assert diagnostics["delivery"]["durability"] == durability
        if trouble == "down":
            await core.down()
        elif trouble == "slow":
            core.delay = SLOW
        await trio.sleep(TROUBLE)
        at_kill = (await rt.diagnostics())["delivery"]
        killed_at = time.time()
        rt.proc.kill()
        with trio.fail_after(10):
            assert await rt.proc.wait() == -signal.SIGKILL

    if trouble == "down":
        await core.up()
    core.delay = 0.0
    on_disk = spooled_ids(state)
    (state / "snapshot.json").unlink()  # the restart only delivers the spool: no new load
    async with live_runtime(env, log, target=TARGET) as rt:
        await wait_until(lambda: on_disk <= set(core.ids()), timeout=30, step=0.1)
        if trouble == "slow":
            await trio.sleep(SLOW + 0.5)  # requests Core was still answering at the kill
        await rt.terminate()

    readings = _readings_of(core, pid)
    assert len(readings) == DEVICES
    made = sum(max(seqs) for seqs in readings.values())
    lost = made - sum(len(seqs) for seqs in readings.values())
    ages = _holes(readings, killed_at)
    worst = max(ages)
    report(
        f"kill -9 {durability} core {trouble}",
        readings=made,
        in_memory_at_kill=at_kill["queue_depth"],
        spooled_at_kill=len(on_disk),
        lost_inside=lost,
        oldest_loss_s=round(worst, 3),
    )
    assert worst <= WINDOW[durability], (
        f"a reading made {worst:.2f} s before the kill was lost "
        f"(window {WINDOW[durability]} s; {lost} of {made} inside the last readings)"
    )
