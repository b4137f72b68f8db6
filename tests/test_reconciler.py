"""The config-sync supervisor, on the virtual clock."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from typing import Any

import pytest
import trio

from runtime import ActorState, InvalidConfig
from runtime.lowlevel import ActorNursery, ConfigSync, Registry, select_by_field
from runtime.testing import RecordingSink

from .helpers import Probe, ProbeConfig, wait_until


class Tunable(Probe):
    """A probe that adopts changed configs in place (unless told to refuse)."""

    async def reconfigure(self, config: ProbeConfig) -> None:
        self.calls.append(("reconfigure", trio.current_time()))
        if config.then == "refuse":
            raise ValueError("cannot change that live")


class OtherProbe(Probe):
    pass


def snapshot(generation: int | None, *configs: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "generation": generation,
        "containerId": "ctr-1",
        "integrationId": "int-1",
        "reason": "test",
        "configs": list(configs),
        **extra,
    }


def cfg(config_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": config_id, **fields}


def lifecycle_events(sink: RecordingSink) -> list[tuple[str, str]]:
    return [(e.device_id, e.event_type) for e in sink.event_records if e.source == "config_sync"]


async def test_repeated_syncs_of_unchanged_configs_restart_nothing_and_say_nothing(
    actors: ActorNursery, sink: RecordingSink, autojump_clock: Any
) -> None:
    sync = ConfigSync(actors, Probe, sink)
    first = await sync.apply_snapshot(snapshot(1, cfg("a"), cfg("b"), cfg("c")))
    assert first.status == "synced" and set(first.added) == {"a", "b", "c"}
    await wait_until(lambda: all(s.state is ActorState.RUNNING for s in actors))
    supervisors = {s.identity.id: s for s in actors}
    events_before = len(sink.event_records)
    for generation in range(2, 7):
        again = await sync.apply_snapshot(snapshot(generation, cfg("c"), cfg("a"), cfg("b")))
        assert (again.applied, again.removed, again.unchanged) == ((), (), 3)
    assert {s.identity.id: s for s in actors} == supervisors
    assert all(len(s.actor.times("setup")) == 1 for s in actors)
    assert len(sink.event_records) == events_before
    assert lifecycle_events(sink) == [
        ("a", "device.configured"),
        ("b", "device.configured"),
        ("c", "device.configured"),
    ]


async def test_a_changed_config_restarts_exactly_that_actor(
    actors: ActorNursery, sink: RecordingSink, autojump_clock: Any
) -> None:
    sync = ConfigSync(actors, Probe, sink)
    await sync.apply_snapshot(snapshot(1, cfg("a"), cfg("b", pollIntervalSeconds=2)))
    old_a, old_b = actors.get("a"), actors.get("b")
    result = await sync.apply_snapshot(snapshot(2, cfg("a"), cfg("b", pollIntervalSeconds=5)))
    assert (result.restarted, result.reconfigured, result.unchanged) == (("b",), (), 1)
    assert actors.get("a") is old_a
    new_b = actors.get("b")
    assert new_b is not None and new_b is not old_b
    assert old_b is not None and old_b.state is ActorState.STOPPED and old_b.actor.times("teardown")
    assert new_b.actor.config.poll_interval_seconds == 5
    assert lifecycle_events(sink)[-1] == ("b", "device.reconfigured")


async def test_an_actor_with_a_reconfigure_hook_is_changed_in_place(
    actors: ActorNursery, sink: RecordingSink, autojump_clock: Any
) -> None:
    sync = ConfigSync(actors, Tunable, sink)
    await sync.apply_snapshot(snapshot(1, cfg("t", pollIntervalSeconds=1)))
    await wait_until(lambda: len(actors.get("t").actor.times("poll")) >= 2)  # type: ignore[union-attr]
    before = actors.get("t")
    result = await sync.apply_snapshot(snapshot(2, cfg("t", pollIntervalSeconds=4)))
    assert result.reconfigured == ("t",) and result.restarted == ()
    after = actors.get("t")
    assert after is before and after is not None
    assert after.actor.config.poll_interval_seconds == 4
    assert [h for h, _ in after.actor.calls].count("setup") == 1
    polls = len(after.actor.times("poll"))
    await trio.sleep(8.01)
    assert len(after.actor.times("poll")) - polls in (2, 3), "the new interval applies"
    assert lifecycle_events(sink)[-1] == ("t", "device.reconfigured")


async def test_a_refused_reconfigure_falls_back_to_a_restart(
    actors: ActorNursery, sink: RecordingSink, autojump_clock: Any
) -> None:
    sync = ConfigSync(actors, Tunable, sink)
    await sync.apply_snapshot(snapshot(1, cfg("t")))
    before = actors.get("t")
    result = await sync.apply_snapshot(snapshot(2, cfg("t", then="refuse")))
    assert result.restarted == ("t",)
    assert actors.get("t") is not before


async def test_removed_and_deleted_configs_stop_cleanly_and_leave_the_registry(
    actors: ActorNursery, sink: RecordingSink, autojump_clock: Any
) -> None:
    sync = ConfigSync(actors, Probe, sink)
    registry = Registry(actors)
    await sync.apply_snapshot(snapshot(1, cfg("a"), cfg("b"), cfg("c")))
    await wait_until(lambda: all(s.actor.times("poll") for s in actors))
    b, c = actors.get("b"), actors.get("c")
    result = await sync.apply_snapshot(
        snapshot(2, cfg("a"), cfg("c"), deletedConfigIds=["c", "zz"])
    )
    assert set(result.removed) == {"b", "c"}
    assert result.active_config_ids == ("a",)
    assert [r.config_id for r in result.rejected] == ["c"] and result.rejected[0].code == "deleted"
    for stopped in (b, c):
        assert stopped is not None and stopped.state is ActorState.STOPPED
        assert len(stopped.actor.times("teardown")) == 1
    assert registry.get("b") is None and registry.get("c") is None and len(registry) == 1
    assert sorted(lifecycle_events(sink)[-2:]) == [
        ("b", "device.deconfigured"),
        ("c", "device.deconfigured"),
    ]


async def test_stale_generations_are_ignored_and_a_repeat_is_a_no_op(
    actors: ActorNursery, sink: RecordingSink, autojump_clock: Any
) -> None:
    sync = ConfigSync(actors, Probe, sink)
    await sync.apply_snapshot(snapshot(5, cfg("a"), configHash="h5"))
    stale = await sync.apply_snapshot(snapshot(4, cfg("x")))
    assert stale.status == "stale_ignored" and "older than 5" in (stale.note or "")
    assert stale.active_config_ids == ("a",) and "x" not in actors
    repeat = await sync.apply_snapshot(snapshot(5, cfg("y"), configHash="h5"))
    assert repeat.status == "synced" and repeat.applied == () and "y" not in actors
    assert sync.last_generation == 5


async def test_an_invalid_config_is_reported_and_the_rest_applies(
    actors: ActorNursery, sink: RecordingSink, autojump_clock: Any
) -> None:
    sync = ConfigSync(actors, Probe, sink)
    await sync.apply_snapshot(snapshot(1, cfg("keep")))
    result = await sync.apply_snapshot(
        snapshot(
            2,
            cfg("good"),
            cfg("keep", pollIntervalSeconds=-1),  # an invalid update of a running config
            cfg("bad", polls="not a list"),
            {"pollIntervalSeconds": 3},  # no id at all
            "not an object",
        )
    )
    assert result.added == ("good",)
    rejected = {r.config_id: r for r in result.rejected}
    assert set(rejected) == {"keep", "bad", None}
    assert rejected["bad"].code == "invalid_config"
    assert {tuple(e["loc"]) for e in rejected["bad"].errors} == {("polls",)}
    assert "keep" in actors, "an invalid update leaves the running device alone"
    body = json.loads(json.dumps(result.to_dict()))
    assert body["skipped"] == [r.config_id for r in result.rejected]


async def test_a_malformed_snapshot_changes_nothing(
    actors: ActorNursery, sink: RecordingSink, autojump_clock: Any
) -> None:
    sync = ConfigSync(actors, Probe, sink)
    with pytest.raises(InvalidConfig, match="malformed"):
        await sync.apply_snapshot({"generation": "soon", "configs": [cfg("a")]})
    with pytest.raises(InvalidConfig):
        await sync.apply_snapshot({"configs": {"a": 1}})
    assert len(actors) == 0


async def test_twenty_concurrent_snapshots_end_in_exactly_the_newest(
    actors: ActorNursery, sink: RecordingSink, autojump_clock: Any
) -> None:
    sync = ConfigSync(actors, Probe, sink)

    def nth(generation: int) -> dict[str, Any]:
        ids = [f"d{k}" for k in range(generation % 7 + 1)]
        return snapshot(generation, *(cfg(i, seed=generation) for i in ids))

    order = list(range(1, 21))
    random.Random(5).shuffle(order)
    results: dict[int, Any] = {}

    async def fire(generation: int) -> None:
        results[generation] = await sync.apply_snapshot(nth(generation))

    async with trio.open_nursery() as nursery:
        for generation in order:
            nursery.start_soon(fire, generation)
    expected = {f"d{k}" for k in range(20 % 7 + 1)}
    assert {s.identity.id for s in actors} == expected
    assert set(sync.active_config_ids) == expected
    assert all(s.actor.config.model_extra["seed"] == 20 for s in actors)  # type: ignore[index]
    assert results[20].status == "synced"
    assert sync.last_generation == 20


async def test_each_config_chooses_its_actor_class(
    actors: ActorNursery, sink: RecordingSink, autojump_clock: Any
) -> None:
    sync = ConfigSync(
        actors, select_by_field("device_type", {"probe": Probe, "other": OtherProbe}), sink
    )
    result = await sync.apply_snapshot(
        snapshot(
            1,
            cfg("p", device_type="probe"),
            cfg("o", deviceType="other"),
            cfg("x", device_type="toaster"),
        )
    )
    assert set(result.added) == {"p", "o"}
    assert type(actors.get("p").actor) is Probe and type(actors.get("o").actor) is OtherProbe  # type: ignore[union-attr]
    (rejection,) = result.rejected
    assert rejection.config_id == "x" and "toaster" in rejection.message
    switched = await sync.apply_snapshot(
        snapshot(2, cfg("p", device_type="other"), cfg("o", deviceType="other"))
    )
    assert switched.restarted == ("p",)
    assert type(actors.get("p").actor) is OtherProbe  # type: ignore[union-attr]


async def test_snapshot_scope_fills_the_identities_of_its_configs(
    actors: ActorNursery, sink: RecordingSink, autojump_clock: Any
) -> None:
    sync = ConfigSync(actors, Probe, sink)
    await sync.apply_snapshot(snapshot(1, cfg("a", configId="cfg-a"), cfg("b", container_id="own")))
    a, b = actors.get("a"), actors.get("b")
    assert a is not None and b is not None
    assert (a.identity.config_id, a.identity.container_id, a.identity.integration_id) == (
        "cfg-a",
        "ctr-1",
        "int-1",
    )
    assert b.identity.container_id == "own"


async def test_a_changed_secret_is_a_changed_config(
    actors: ActorNursery, sink: RecordingSink, autojump_clock: Any
) -> None:
    from pydantic import SecretStr

    class Login(ProbeConfig):
        password: SecretStr

    class Cloud(Probe):
        config_model = Login

    sync = ConfigSync(actors, Cloud, sink)
    await sync.apply_snapshot(snapshot(1, cfg("c", password="one")))
    changed = await sync.apply_snapshot(snapshot(2, cfg("c", password="two")))
    assert changed.restarted == ("c",)


async def test_one_config_at_a_time(
    actors: ActorNursery, sink: RecordingSink, autojump_clock: Any
) -> None:
    sync = ConfigSync(actors, Probe, sink)
    assert (await sync.apply_config(cfg("a"))).action == "added"
    assert (await sync.apply_config(cfg("a"))).action == "unchanged"
    assert (await sync.apply_config(cfg("a", pollIntervalSeconds=3))).action == "restarted"
    with pytest.raises(InvalidConfig):
        await sync.apply_config(cfg("a", pollIntervalSeconds=0))
    assert actors.get("a").actor.config.poll_interval_seconds == 3  # type: ignore[union-attr]
    assert (await sync.remove("a")).removed is True
    assert (await sync.remove("a")).removed is False
    assert "a" not in actors and sync.active_config_ids == ()
    assert [t for _, t in lifecycle_events(sink)] == [
        "device.configured",
        "device.reconfigured",
        "device.deconfigured",
    ]
    assert len(sync.recent_events) == 3


async def test_removed_configs_are_reported_after_their_last_event(
    actors: ActorNursery, sink: RecordingSink, autojump_clock: Any
) -> None:
    removed: list[tuple[str, int]] = []
    sync = ConfigSync(
        actors,
        Probe,
        sink,
        on_removed=lambda config_id: removed.append((config_id, len(sink.event_records))),
    )
    await sync.apply_snapshot(snapshot(1, cfg("a", configId="uuid-a"), cfg("b"), cfg("c")))
    await sync.apply_snapshot(snapshot(2, cfg("b"), cfg("c", pollIntervalSeconds=3)))
    await sync.remove("b")
    assert [config_id for config_id, _ in removed] == ["uuid-a", "b"]  # not c: restarted
    for config_id, events_then in removed:
        then = list(sink.event_records)[:events_then]
        last = [e for e in then if e.identity.config_id == config_id]
        assert last[-1].event_type == "device.deconfigured", "nothing of it follows"
