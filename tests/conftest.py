from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
import trio.testing

import runtime._offload
from runtime.lowlevel import ActorNursery, open_actor_nursery
from runtime.testing import FakeCore, RecordingSink
from tests.served import Served, env_for, serve

T = TypeVar("T")


@pytest.fixture
def core(fake_core: FakeCore) -> FakeCore:
    """A real HTTP server on 127.0.0.1 standing in for Core (``runtime.testing``'s
    ``fake_core``), under the short name these tests use."""
    return fake_core


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


@pytest.fixture(autouse=True)
def inline_sqlite_under_virtual_time(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under the autojump clock, run the spool's SQLite calls on the trio thread.

    A call in a worker thread leaves trio idle, so the clock would leap to the next
    deadline while SQLite works; inline, virtual time stays exact. Production, and every
    test on the real clock, use the worker thread."""
    if "autojump_clock" not in request.fixturenames:
        return

    async def inline(fn: Callable[..., T], *args: Any, limiter: object = None) -> T:
        await trio.lowlevel.checkpoint()
        return fn(*args)

    monkeypatch.setattr(runtime._offload, "offload", inline)


@pytest.fixture
async def served(core: FakeCore, tmp_path: Path) -> AsyncIterator[Served]:
    # pytest-trio takes the clock from the test's own arguments only.
    if not isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock):
        pytest.fail("tests using `served` must take the `autojump_clock` argument")
    async with serve(core, env_for(tmp_path, core)) as s:
        yield s
