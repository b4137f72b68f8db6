"""An actor that blocks the trio thread is named (issue 15, item 6).

Real clock on purpose: virtual time stands still while the thread is blocked, so only
real time can see a blocking call. Each test is bounded to a few seconds.
"""

from __future__ import annotations

import time
from typing import Any

import trio

from runtime import DeviceActor, Reading, RuntimeConfig
from runtime._health import fleet_concerns
from runtime.lowlevel import open_actor_nursery
from runtime.testing import RecordingSink

from .helpers import Probe, wait_until

BLOCK = 0.6  # seconds each blocking poll holds the trio thread
#: A stall is measured from the watchdog's last probe (every 0.1 s) that went unanswered:
#: it may have started up to one period before that.
SHORT_BY = 0.15


class Blocking(DeviceActor[RuntimeConfig]):
    """Polls every 0.2 s; its 2nd and 4th polls call time.sleep() on the trio thread."""

    poll_interval = 0.2

    def __init__(self, config: RuntimeConfig) -> None:
        super().__init__(config)
        self.polls = 0

    async def poll(self) -> list[Reading]:
        self.polls += 1
        if self.polls in (2, 4):
            time.sleep(BLOCK)  # the mistake under test  # noqa: ASYNC251
        return [Reading("n", self.polls)]


async def test_an_actor_blocking_the_trio_thread_is_named_once_per_episode() -> None:
    sink = RecordingSink()
    with trio.fail_after(15):
        async with open_actor_nursery(sink) as actors:
            assert actors.stalls is not None, "on by default on the real clock"
            blocker = actors.spawn(Blocking, {"id": "blocker"})
            sibling = actors.spawn(Probe, {"id": "sibling", "pollIntervalSeconds": 0.2})
            await wait_until(lambda: blocker.health().blocking_calls >= 2, step=0.05)
            health = blocker.health()
            assert health.blocking_calls == 2
            assert health.longest_stall is not None and BLOCK - SHORT_BY <= health.longest_stall < 2
            assert health.to_dict()["blocking_calls"] == 2
            assert sibling.health().blocking_calls == 0, "the victim is not the culprit"
            (event,) = sink.events("runtime.blocking_call")
            assert (event.device_id, event.severity) == ("blocker", "warning")
            assert event.data["where"].startswith("poll (test_stalls.py:")
            assert "trio.to_thread.run_sync" in event.data["hint"]
            (concern,) = actors.concerns()
            assert concern.code == "actors_blocking" and "blocker" in concern.message
            assert blocker.state.value == "running" and not fleet_concerns({"running": 2})


async def test_a_loop_that_only_waits_reports_no_stall() -> None:
    with trio.fail_after(10):
        async with open_actor_nursery(RecordingSink()) as actors:
            fleet = [
                actors.spawn(Probe, {"id": f"p{i}", "pollIntervalSeconds": 0.2}) for i in range(50)
            ]
            await trio.sleep(1.5)
            assert all(s.health().blocking_calls == 0 for s in fleet)
            assert actors.concerns() == []
            assert actors.stalls is not None and actors.stalls.unattributed == 0


async def test_a_stall_outside_any_actor_is_counted_but_blames_nobody() -> None:
    with trio.fail_after(10):
        async with open_actor_nursery(RecordingSink()) as actors:
            sup = actors.spawn(Probe, {"id": "p", "pollIntervalSeconds": 0.2})
            await trio.sleep(0.5)
            time.sleep(BLOCK)  # the test's own task, not an actor's  # noqa: ASYNC251
            stalls = actors.stalls
            assert stalls is not None
            await wait_until(lambda: stalls.unattributed >= 1, step=0.05, timeout=5)
            assert stalls.longest_unattributed >= BLOCK - SHORT_BY
            assert sup.health().blocking_calls == 0 and actors.concerns() == []


async def test_the_watchdog_stays_off_under_a_virtual_clock(autojump_clock: Any) -> None:
    async with open_actor_nursery(RecordingSink()) as actors:
        assert actors.stalls is None and actors.concerns() == []
