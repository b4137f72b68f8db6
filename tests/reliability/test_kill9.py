"""``kill -9`` of the runtime with telemetry in the spool, then a restart on the same state.

``serve`` opens the outbox with the default settings, ``durability="memory"`` (neither
``--durability`` nor ``PIPHI_DURABILITY`` is given), so a `kill -9` loses at most what was
only in memory (never more than `memory_limit` = 10,000 items), and runtime/_outbox.py:
"Either way a committed batch survives a killed process". This test checks both, exactly:
once the devices are quiet and the outbox has stopped moving, every spooled row is on disk
after the kill and is delivered after the restart, and whatever was lost is no more than
what the outbox held in memory. How recent the lost readings are (the window in time, in
both modes, under load) is tests/reliability/test_crash_window.py's.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.helpers import wait_until
from tests.reliability._procs import (
    MEMORY_LIMIT,
    LiveCore,
    LiveRuntime,
    device,
    live_runtime,
    quiesce,
    report,
    runtime_env,
    settle,
    spooled_ids,
    start_devices,
)

pytestmark = pytest.mark.slow  # a real process: make test runs it, -m "not slow" skips it

DEVICES = 12


async def _still(rt: LiveRuntime) -> dict[str, Any]:
    """Wait until the outbox's figures are the same on two reads in a row (Core is down
    and the devices are quiet, so only the spool writer could still move them)."""
    previous: list[tuple[int, ...]] = []

    def still(diagnostics: dict[str, Any]) -> bool:
        stats = diagnostics["delivery"]
        figures = tuple(stats[k] for k in ("accepted", "spooled", "spool_depth", "queue_depth"))
        unchanged = previous == [figures]
        previous[:] = [figures]
        return unchanged

    return await rt.wait_for(still, timeout=10, what="the outbox stopped moving")


def _new_readings_from(core: LiveCore, old: set[str]) -> set[str]:
    """The devices with readings at Core other than the ``old`` ones."""
    return {b["device_id"] for b in core.telemetry() if b["telemetry_id"] not in old}


async def test_kill_9_loses_at_most_the_memory_window(core: LiveCore, tmp_path: Path) -> None:
    state = tmp_path / "state"
    env, log = runtime_env(core, state), tmp_path / "runtime.log"
    configs = [device(n) for n in range(DEVICES)]
    ids = {c["id"] for c in configs}

    async with live_runtime(env, log) as rt:
        await start_devices(rt, core, configs)
        await core.down()
        await rt.wait_for(
            lambda d: (
                d["delivery"]["link"]["state"] == "down" and d["delivery"]["spool_depth"] >= 100
            ),
            timeout=15,
            what="telemetry spooling while Core is down",
        )
        await quiesce(rt, configs)
        at_kill = await _still(rt)
        rt.proc.kill()
        with trio.fail_after(10):
            assert await rt.proc.wait() == -signal.SIGKILL
        generation = rt.generation

    stats = at_kill["delivery"]
    assert stats["durability"] == "memory", "serve uses the default durability"
    delivered_before = set(core.ids())
    on_disk = spooled_ids(state)
    # "a committed batch survives a killed process": every row the spool reported is there.
    assert len(on_disk) == stats["spool_depth"] >= 100
    lost = stats["accepted"] - len(delivered_before | on_disk)
    # "a kill -9 loses what was only in memory (the lane queues, at most memory_limit)":
    # nothing was waiting for the disk (the figures had stopped moving), so the loss is
    # bounded by what the outbox held in memory at the kill.
    assert 0 <= lost <= stats["queue_depth"] <= MEMORY_LIMIT, (lost, stats)

    await core.up()
    async with live_runtime(env, log) as rt:
        rt.generation = generation
        back = await rt.diagnostics()
        assert back["runtime"]["devices"] == DEVICES, "the devices come back from our copy"
        await rt.sync(configs)  # healthy again: new readings travel beside the replay
        await wait_until(lambda: on_disk <= set(core.ids()), timeout=30, step=0.1)
        old = delivered_before | on_disk
        await wait_until(lambda: _new_readings_from(core, old) == ids, timeout=15, step=0.1)
        await quiesce(rt, configs)
        final = await settle(rt)
        await rt.terminate()

    after = final["delivery"]
    assert after["dropped"] == 0 and after["rejected"] == 0, after
    stored = core.ids()
    assert on_disk <= set(stored), "every spooled item is delivered after the restart"
    fresh = set(stored) - delivered_before - on_disk
    assert len(fresh) == after["accepted"], "everything the restarted runtime accepted arrived"
    report(
        "kill -9",
        accepted_before_kill=stats["accepted"],
        spooled_at_kill=len(on_disk),
        in_memory_at_kill=stats["queue_depth"],
        lost=lost,
        accepted_after_restart=after["accepted"],
        duplicates=sum(n - 1 for n in stored.values() if n > 1),
    )
