from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime._scheduler import Doorbell, Scheduler


class Recorder:
    def __init__(self, log: list[tuple[str, float]], name: str) -> None:
        self.log, self.name = log, name

    def ring(self) -> None:
        self.log.append((self.name, trio.current_time()))


async def test_targets_ring_at_their_time_in_order_and_never_early(autojump_clock: Any) -> None:
    scheduler = Scheduler(resolution=0.005)
    log: list[tuple[str, float]] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        start = trio.current_time()
        wants = {"c": 3.0, "a": 0.0101, "b": 1.25, "d": 3.0001}
        for name, offset in wants.items():
            scheduler.ring_at(start + offset, Recorder(log, name))
        await trio.sleep(4)
        nursery.cancel_scope.cancel()
    assert [name for name, _ in log] == ["a", "b", "c", "d"]
    for name, at in log:
        assert 0 <= at - (start + wants[name]) <= 0.005


async def test_an_earlier_entry_wakes_a_scheduler_sleeping_towards_a_later_one(
    autojump_clock: Any,
) -> None:
    scheduler = Scheduler()
    log: list[tuple[str, float]] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        start = trio.current_time()
        scheduler.ring_at(start + 100, Recorder(log, "late"))
        await trio.sleep(1)
        scheduler.ring_at(start + 2, Recorder(log, "early"))
        await trio.sleep(3)
        assert log == [("early", pytest.approx(start + 2, abs=0.005))]
        assert len(scheduler) == 1
        nursery.cancel_scope.cancel()


@settings(max_examples=200)
@given(
    st.floats(min_value=0, max_value=1e7, allow_nan=False),
    st.sampled_from([0.001, 0.005, 0.1, 0.003]),
)
def test_slots_are_never_before_the_requested_time(when: float, resolution: float) -> None:
    scheduler = Scheduler(resolution=resolution)
    scheduler._sleeping_until = -1.0  # no wakeup needed outside trio
    scheduler.ring_at(when, Recorder([], "x"))
    (slot,) = scheduler._slots
    assert slot * resolution >= when
    assert slot * resolution - when <= resolution * 1.000001


def test_resolution_must_be_positive() -> None:
    for bad in (0, -1, float("inf")):
        with pytest.raises(ValueError, match="resolution"):
            Scheduler(resolution=bad)


async def test_a_doorbell_remembers_a_ring_nobody_waited_for(autojump_clock: Any) -> None:
    bell = Doorbell()
    bell.ring()
    bell.ring()  # rings collapse: one wakeup
    with trio.fail_after(1):
        await bell.wait()
    with trio.move_on_after(1) as scope:
        await bell.wait()
    assert scope.cancelled_caught


async def test_a_doorbell_wakes_its_waiter_and_can_be_cancelled(autojump_clock: Any) -> None:
    bell = Doorbell()
    woke: list[float] = []

    async def waiter() -> None:
        await bell.wait()
        woke.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(2)
        bell.ring()
    assert len(woke) == 1
    with trio.move_on_after(1):
        await bell.wait()  # cancelled while parked: the bell is usable again
    bell.ring()
    with trio.fail_after(1):
        await bell.wait()


async def test_a_doorbell_has_one_waiter(autojump_clock: Any) -> None:
    bell = Doorbell()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(bell.wait)
        await trio.sleep(0.1)
        with pytest.raises(RuntimeError, match="single-waiter"):
            await bell.wait()
        bell.ring()
