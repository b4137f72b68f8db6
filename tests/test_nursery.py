from typing import Any

import pytest
import trio

from runtime import ActorState, InvalidActor, InvalidConfig
from runtime.lowlevel import ActorNursery

from .helpers import Probe, wait_until


async def test_spawn_validates_the_config_against_the_actor_model(
    actors: ActorNursery, autojump_clock: Any
) -> None:
    with pytest.raises(InvalidConfig) as info:
        actors.spawn(Probe, {"id": "p", "pollIntervalSeconds": -2})
    assert info.value.details["config_id"] == "p"
    with pytest.raises(InvalidActor):
        actors.spawn(dict, {"id": "p"})  # type: ignore[arg-type]
    assert len(actors) == 0


async def test_one_actor_per_config_id(actors: ActorNursery, autojump_clock: Any) -> None:
    first = actors.spawn(Probe, {"id": "p"})
    with pytest.raises(ValueError, match="already running"):
        actors.spawn(Probe, {"id": "p"})
    assert actors.get("p") is first and "p" in actors and list(actors) == [first]
    await first.stop()
    assert "p" not in actors and actors.get("p") is None
    second = actors.spawn(Probe, {"id": "p"})
    await wait_until(lambda: second.state is ActorState.RUNNING)


async def test_stop_before_the_actor_ever_ran(actors: ActorNursery, autojump_clock: Any) -> None:
    sup = actors.spawn(Probe, {"id": "p"})
    await sup.stop()
    assert sup.state is ActorState.STOPPED
    assert sup.actor.calls == [], "no setup, so nothing to tear down"
    await sup.wait_stopped()


async def test_cancel_is_immediate_and_wait_stopped_waits(
    actors: ActorNursery, autojump_clock: Any
) -> None:
    sup = actors.spawn(Probe, {"id": "p"})
    await wait_until(lambda: sup.actor.times("poll"))
    sup.cancel()
    assert sup.state is not ActorState.STOPPED
    with trio.fail_after(1):
        await sup.wait_stopped()
    assert sup.state is ActorState.STOPPED and sup.actor.times("teardown")


async def test_a_stopped_actor_is_freed_without_the_cyclic_gc(
    actors: ActorNursery, autojump_clock: Any
) -> None:
    import gc
    import weakref

    async def run_and_stop() -> tuple[weakref.ref[Any], weakref.ref[Any]]:
        sup = actors.spawn(Probe, {"id": "p"})
        await wait_until(lambda: len(sup.actor.times("poll")) >= 2)
        assert await sup.command("echo", {"x": 1}) == {"x": 1}
        await sup.stop()
        return weakref.ref(sup), weakref.ref(sup.actor)

    gc.disable()
    try:
        refs = await run_and_stop()
        await trio.sleep(5)  # let stale timer-wheel entries pass
        assert [r() for r in refs] == [None, None]
    finally:
        gc.enable()
