from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from runtime import ActorNursery, open_actor_nursery
from runtime.testing import RecordingSink


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


@pytest.fixture
async def actors(sink: RecordingSink) -> AsyncIterator[ActorNursery]:
    # pytest-trio takes the clock from the test's own arguments only: a clock requested
    # here would be silently ignored and the test would sleep in real time.
    if not isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock):
        pytest.fail("tests using `actors` must take the `autojump_clock` argument")
    async with open_actor_nursery(sink, rng=random.Random(1234)) as nursery:
        yield nursery
