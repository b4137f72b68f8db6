"""No single actor can starve the trio thread (issue 14, item 1), on trio's virtual clock.

Poll intervals have a floor (``MIN_POLL_INTERVAL``, 0.1 s) in configs and actor classes,
and the supervisor yields to trio between any two things it does for an actor.
"""

from __future__ import annotations

import itertools
import json
import random
from typing import Any

import pytest
import trio
import trio.lowlevel

from runtime import (
    DeviceActor,
    DeviceUnavailable,
    Integration,
    InvalidActor,
    InvalidConfig,
    Reading,
    RestartPolicy,
    RuntimeConfig,
)
from runtime._config import MIN_POLL_INTERVAL, PollInterval, validate_config
from runtime.devcore import DevCore
from runtime.lowlevel import ActorNursery, open_actor_nursery
from runtime.testing import RecordingSink, config_payload

from .helpers import Probe, wait_until


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 3) for a, b in itertools.pairwise(times)]


class Eager(DeviceActor[RuntimeConfig]):
    """A poll that returns without awaiting anything: never a checkpoint of its own."""

    poll_interval = MIN_POLL_INTERVAL

    def __init__(self, config: RuntimeConfig) -> None:
        super().__init__(config)
        self.times: list[float] = []

    async def poll(self) -> list[Reading]:
        self.times.append(trio.current_time())
        return [Reading("n", len(self.times))]


async def test_a_poll_that_never_awaits_at_the_minimum_leaves_its_sibling_on_schedule(
    actors: ActorNursery, autojump_clock: Any
) -> None:
    eager = actors.spawn(Eager, {"id": "eager"})
    healthy = actors.spawn(Probe, {"id": "healthy"})
    await trio.sleep(60)
    assert len(eager.actor.times) >= 595, "ten polls a second"
    assert set(gaps(eager.actor.times)) <= {0.1}
    polls = healthy.actor.times("poll")
    assert len(polls) >= 59 and set(gaps(polls)) == {1.0}
    assert healthy.health().overruns == 0 and eager.health().overruns == 0


class Bottom(random.Random):
    """No jitter at all: every backoff wait is zero, so each retry is due at once."""

    def random(self) -> float:
        return 0.0


class Spinner(DeviceActor[RuntimeConfig]):
    """Fails SPIN times in a row at once, without awaiting (in ``setup()`` or ``poll()``),
    each retry due at once. Its first attempt starts a witness task in ``nursery`` that
    counts its own turns until the spin is over; each attempt notes the count."""

    poll_interval = 1.0
    SPIN = 200
    where = "poll"
    nursery: trio.Nursery

    def __init__(self, config: RuntimeConfig) -> None:
        super().__init__(config)
        self.attempts = 0
        self.witnessed: list[int] = []
        self.turns = 0

    async def _witness(self) -> None:
        # Always runnable while it lasts, so it must end with the spin: virtual time
        # stands still while any task can run.
        while self.attempts <= self.SPIN:
            self.turns += 1
            await trio.lowlevel.checkpoint()

    async def _fail_at_once(self) -> None:
        self.attempts += 1
        if self.attempts == 1:
            self.nursery.start_soon(self._witness)
        self.witnessed.append(self.turns)
        if self.attempts <= self.SPIN:
            if self.where == "poll":
                raise DeviceUnavailable("no answer")
            raise RuntimeError("refused at once")
        await trio.lowlevel.checkpoint()

    async def setup(self) -> None:
        if self.where == "setup":
            await self._fail_at_once()

    async def poll(self) -> list[Reading]:
        await self._fail_at_once()
        return []


@pytest.mark.parametrize("where", ["poll", "setup"])
async def test_the_supervisor_yields_between_actions_whatever_the_actor_does(
    autojump_clock: Any, where: str
) -> None:
    class Spin(Spinner):
        pass

    Spin.where = where
    policy = RestartPolicy(max_restarts=10_000)
    async with (
        trio.open_nursery() as witnesses,
        open_actor_nursery(RecordingSink(), rng=Bottom()) as actors,
    ):
        sup = actors.spawn(Spin, {"id": "spin"}, policy=policy)
        actor = sup.actor
        actor.nursery = witnesses
        # Every retry is due at once: only the supervisor's own yields let another task
        # (the witness) in between two attempts.
        await wait_until(lambda: actor.attempts > Spin.SPIN and sup.health().available)
    # trio runs each batch of runnable tasks in either order, so the witness's turns
    # between two given attempts are 0 to 2; over the spin they add up to one per attempt.
    # Without a yield in the supervisor, the spin is one task step: no turn at all.
    turns = actor.witnessed[Spin.SPIN - 1] - actor.witnessed[1]
    assert turns >= Spin.SPIN - 10, turns


# -- the floor ------------------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [1e-9, 1e-5, 0.05, 0.0999])
def test_a_config_below_the_minimum_is_refused_with_the_minimum_named(seconds: float) -> None:
    with pytest.raises(InvalidConfig) as info:
        validate_config(RuntimeConfig, {"id": "x", "poll_interval_seconds": seconds})
    (error,) = info.value.details["errors"]
    assert error["loc"] == ("poll_interval_seconds",)
    assert error["type"] == "poll_interval_too_short"
    assert error["msg"] == f"a poll interval must be at least 0.1 s, got {seconds}"


def test_the_minimum_is_accepted_and_holds_where_a_subclass_redeclares_the_field() -> None:
    class Loose(RuntimeConfig):
        poll_interval_seconds: float = 5.0  # a plain float: PollInterval's check is not on it

    class Typed(RuntimeConfig):
        poll_interval_seconds: PollInterval = 5.0

    for model in (RuntimeConfig, Loose, Typed):
        assert validate_config(model, {"id": "x", "poll_interval_seconds": 0.1}).id == "x"
        with pytest.raises(InvalidConfig, match="poll_interval_seconds"):
            validate_config(model, {"id": "x", "poll_interval_seconds": 1e-9})
    schema = Typed.model_json_schema(by_alias=False)["properties"]["poll_interval_seconds"]
    assert schema["minimum"] == 0.1, "forms and the OpenAPI document show the floor"


def test_actor_classes_below_the_minimum_fail_at_definition() -> None:
    with pytest.raises(InvalidActor, match=r"poll_interval must be .* at least 0.1 s"):

        class Hasty(DeviceActor[RuntimeConfig]):
            poll_interval = 0.01

            async def poll(self) -> list[Reading]:
                return []

    class HastyConfig(RuntimeConfig):
        poll_interval_seconds: float = 0.001

    with pytest.raises(InvalidActor, match="poll_interval_seconds's default"):

        class HastyDefault(DeviceActor[HastyConfig]):
            async def poll(self) -> list[Reading]:
                return []


async def test_a_config_built_without_validation_is_still_held_to_the_minimum(
    actors: ActorNursery, autojump_clock: Any
) -> None:
    eager = actors.spawn(Eager, RuntimeConfig.model_construct(id="x", poll_interval_seconds=1e-9))
    await trio.sleep(2)
    assert 19 <= len(eager.actor.times) <= 21


async def test_core_sending_a_tiny_interval_gets_a_422_and_the_runtime_stays_responsive(
    devcore: DevCore, run_integration: Any, autojump_clock: trio.abc.Clock
) -> None:
    integration = Integration(id="tiny", name="Tiny", version="1.0.0", actor=Eager)
    async with run_integration(integration) as rt:
        answer = await rt.http.post("/config", json=config_payload("x", poll_interval_seconds=1e-9))
        assert answer.status_code == 422
        problem = answer.json()
        assert "at least 0.1 s" in json.dumps(problem), problem
        assert (await rt.http.get("/health")).status_code == 200
        diagnostics = (await rt.http.get("/diagnostics")).json()["diagnostics"]
        assert diagnostics["actors"] == [], "a refused config changes nothing"
