"""Gateway children are devices (issue 13 §2), on trio's virtual clock: a device id an
actor reports for becomes a child of its config, with its own state, staleness and
commands."""

from __future__ import annotations

import logging
import random
from datetime import timedelta
from typing import Any, ClassVar

import pytest
import trio

from runtime import (
    CommandContext,
    DeviceActor,
    DeviceUnavailable,
    InvalidActor,
    InvalidReading,
    Reading,
    RuntimeConfig,
    command,
)
from runtime._children import MAX_CHILD_KEYS, Children
from runtime.lowlevel import ActorNursery, ConfigSync, open_actor_nursery
from runtime.testing import RecordingSink

from .helpers import VENDOR_TIME, Gateway, ThrottledSink, wait_until


def child_events(sink: RecordingSink, device_id: str) -> list[str]:
    return sink.event_types(device_id)


async def test_a_reported_child_has_its_own_state_and_the_gateway_keeps_its_own(
    actors: ActorNursery, sink: RecordingSink, autojump_clock: trio.abc.Clock
) -> None:
    sup = actors.spawn(Gateway, {"id": "gw"})
    await trio.sleep(25)  # three rounds: at 0, 10 and 20 s
    children = {c.device_id: c for c in sup.children()}
    assert list(children) == ["c1", "c2"]
    c1 = children["c1"]
    assert dict(c1.latest_state) == {"temperature_c": 22, "battery": 90}
    assert dict(c1.units) == {"battery": "%"}
    assert c1.observed_at == VENDOR_TIME + timedelta(seconds=2)
    assert c1.available and c1.last_seen_age == pytest.approx(5, abs=0.01)
    # The gateway's own state holds only its own readings.
    state, _ = sup.published_state()
    assert dict(state) == {"connected": True}
    assert [t.readings[0].value for t in sink.telemetry_for("c1")] == [20, 21, 22]
    assert all(t.identity.config_id == "gw" for t in sink.telemetry_for("c1"))
    assert sup.child("c2") is not None and sup.child("nope") is None


async def test_a_childs_keys_are_bounded(
    actors: ActorNursery, autojump_clock: trio.abc.Clock
) -> None:
    class Chatty(Gateway):
        async def run(self) -> None:
            for n in range(MAX_CHILD_KEYS + 10):
                self.report([Reading(f"k{n}", n)], device_id="c1")
            await trio.sleep_forever()

    sup = actors.spawn(Chatty, {"id": "gw"})
    await trio.sleep(1)
    child = sup.child("c1")
    assert child is not None and len(child.latest_state) == MAX_CHILD_KEYS


async def test_a_childs_report_is_no_proof_of_life_for_the_gateway(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The gateway is offline at first; its retried run() hears children but not itself,
    then reports itself from t=100: only then is it available again."""

    class Deaf(Gateway):
        async def run(self) -> None:
            attempt, self.runs = self.runs, self.runs + 1
            if attempt == 0:
                raise DeviceUnavailable("gateway offline")
            while True:
                self.report([Reading("temperature_c", 20)], device_id="c1")
                if trio.current_time() >= 100:
                    self.report([Reading("connected", True)])
                await trio.sleep(10)

    sink = RecordingSink()
    async with open_actor_nursery(sink, rng=random.Random(1)) as actors:
        sup = actors.spawn(Deaf, {"id": "gw"})
        await trio.sleep(50)
        assert sink.event_types("gw") == ["device.unavailable"]
        assert not sup.health().available
        assert sink.telemetry_for("c1")  # the child was heard meanwhile
        await wait_until(lambda: sup.health().available)
        assert trio.current_time() >= 100
    assert sink.event_types("gw") == ["device.unavailable", "device.available"]
    assert sink.event_types("c1") == []  # heard all along


async def test_a_child_unheard_for_its_window_is_unavailable_once_then_available_once(
    actors: ActorNursery, sink: RecordingSink, autojump_clock: trio.abc.Clock
) -> None:
    sup = actors.spawn(Gateway, {"id": "gw"})  # poll interval 10 s: window max(30, 60) = 60 s
    assert sup.child_stale_after == 60
    await trio.sleep(25)
    sup.actor.muted.add("c2")  # last heard at t=20
    await wait_until(lambda: child_events(sink, "c2"))
    assert trio.current_time() == pytest.approx(80, abs=0.01)
    await trio.sleep(300)
    assert child_events(sink, "c2") == ["device.unavailable"]
    (gone,) = sink.events(device_id="c2")
    assert gone.identity.config_id == "gw" and gone.severity == "warning"
    assert gone.data["reason"] == "offline" and gone.data["parent_device_id"] == "gw"
    assert {"message", "code", "hint", "phase", "last_seen", "stale_after_s"} <= set(gone.data)
    child = sup.child("c2")
    assert child is not None and not child.available
    sup.actor.muted.discard("c2")
    await wait_until(lambda: len(child_events(sink, "c2")) == 2)
    assert child_events(sink, "c2") == ["device.unavailable", "device.available"]
    assert child_events(sink, "c1") == [] and sink.event_types("gw") == []
    assert sup.child("c2").available  # type: ignore[union-attr]


async def test_the_staleness_window_follows_the_poll_interval_or_the_class(
    actors: ActorNursery, sink: RecordingSink, autojump_clock: trio.abc.Clock
) -> None:
    class Brisk(Gateway):
        child_stale_after: ClassVar[float | None] = 15.0

    slow = actors.spawn(Gateway, {"id": "slow", "poll_interval_seconds": 30})
    brisk = actors.spawn(Brisk, {"id": "brisk", "children": ["b1"]})
    assert (slow.child_stale_after, brisk.child_stale_after) == (90, 15)
    await trio.sleep(1)
    brisk.actor.muted.add("b1")  # heard at 0
    await wait_until(lambda: child_events(sink, "b1"))
    assert trio.current_time() == pytest.approx(15, abs=0.01)
    with pytest.raises(InvalidActor):

        class Bad(Gateway):
            child_stale_after: ClassVar[float | None] = -1


async def test_staleness_is_one_timer_entry_per_actor_not_one_per_child(
    actors: ActorNursery, sink: RecordingSink, autojump_clock: trio.abc.Clock
) -> None:
    many = [f"s{n}" for n in range(200)]
    sup = actors.spawn(Gateway, {"id": "gw", "children": many})
    scheduler = actors._scheduler

    def entries() -> int:
        return sum(isinstance(t, Children) for bucket in scheduler._slots.values() for t in bucket)

    seen = set()
    for _ in range(40):
        await trio.sleep(2.5)
        seen.add(entries())
    assert seen == {1}
    assert len(sup.children()) == 200
    sup.actor.muted.update(many[::2])
    await trio.sleep(120)
    assert len(sink.events("device.unavailable")) == 100
    assert entries() == 1


async def test_a_forgotten_child_leaves_quietly(
    actors: ActorNursery, sink: RecordingSink, autojump_clock: trio.abc.Clock
) -> None:
    many = [f"s{n}" for n in range(50)]
    sup = actors.spawn(Gateway, {"id": "gw", "children": many})
    await trio.sleep(5)
    sup.actor.muted.update(many)  # unpaired: the gateway stops hearing them
    for child in many:
        ctx = CommandContext(command="unpair", config_id="gw", device_id=child)
        assert await sup.command("unpair", context=ctx) == {"forgotten": True}
    ctx = CommandContext(command="unpair", config_id="gw", device_id="s0")
    assert await sup.command("unpair", context=ctx) == {"forgotten": False}
    assert sup.children() == ()
    await trio.sleep(600)  # ten windows: no device.unavailable storm
    assert sink.event_count == 0
    sup.actor.muted.discard("s3")  # paired again: a new child, no event
    await trio.sleep(20)
    assert [c.device_id for c in sup.children()] == ["s3"]
    assert sink.event_count == 0


async def test_children_are_capped_with_one_warning(
    actors: ActorNursery,
    sink: RecordingSink,
    autojump_clock: trio.abc.Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Small(Gateway):
        max_children: ClassVar[int] = 3

    caplog.set_level(logging.WARNING)
    sup = actors.spawn(Small, {"id": "gw", "children": [f"s{n}" for n in range(5)]})
    await trio.sleep(25)
    assert [c.device_id for c in sup.children()] == ["s0", "s1", "s2"]
    assert len(sink.telemetry_for("s4")) == 3  # delivered all the same
    warnings = [r for r in caplog.records if "max_children" in r.getMessage()]
    assert len(warnings) == 1


async def test_report_refuses_a_child_id_that_cannot_be_a_key(
    actors: ActorNursery, autojump_clock: trio.abc.Clock
) -> None:
    errors: list[Exception] = []

    class Sloppy(Gateway):
        async def run(self) -> None:
            for bad in ("x" * 200, "a\nb", ""):
                try:
                    self.report([Reading("n", 1)], device_id=bad)
                except InvalidReading as exc:
                    errors.append(exc)
            await trio.sleep_forever()

    sup = actors.spawn(Sloppy, {"id": "gw"})
    await trio.sleep(1)
    assert len(errors) == 3 and sup.children() == ()


async def test_a_restart_for_a_changed_config_keeps_the_children(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Core heard c2 go; the new actor for the changed config must still tell Core when
    c2 is back, and when c1 goes (which it never heard of itself)."""
    sink = RecordingSink()
    async with open_actor_nursery(sink, rng=random.Random(3)) as actors:
        sync = ConfigSync(actors, Gateway, sink)
        await sync.apply_snapshot({"generation": 1, "configs": [{"id": "gw"}]})
        first = actors.get("gw")
        assert first is not None
        await trio.sleep(5)
        first.actor.muted.add("c2")
        await wait_until(lambda: child_events(sink, "c2") == ["device.unavailable"])
        changed = {"id": "gw", "children": ["c2"], "poll_interval_seconds": 5}
        await sync.apply_snapshot({"generation": 2, "configs": [changed]})
        second = actors.get("gw")
        assert second is not None and second is not first
        assert {c.device_id for c in second.children()} == {"c1", "c2"}
        await wait_until(lambda: len(child_events(sink, "c1")) == 1, timeout=120)
        await wait_until(lambda: len(child_events(sink, "c2")) == 2)
    assert child_events(sink, "c2") == ["device.unavailable", "device.available"]
    assert child_events(sink, "c1") == ["device.unavailable"]


# -- the command context ---------------------------------------------------------------


async def test_a_handler_that_asks_for_the_context_gets_it(
    actors: ActorNursery, autojump_clock: trio.abc.Clock
) -> None:
    sup = actors.spawn(Gateway, {"id": "gw"})
    await trio.sleep(1)
    assert await sup.command("turn_on") == {"device_id": "gw"}  # no context: its own device
    ctx = CommandContext(
        command="turn_on",
        config_id="gw",
        device_id="c1",
        entity_id="gw:c1",
        idempotency_key="k",
        correlation_id="corr",
        parent_device_id="gw",
    )
    assert await sup.command("turn_on", context=ctx) == {"device_id": "c1"}
    own, given = sup.actor.contexts
    assert (own.device_id, own.entity_id, own.is_child) == ("gw", "gw:gw", False)
    assert given is ctx and given.is_child
    assert await sup.command("ping", context=ctx) == "pong"  # declares none: gets none


def test_a_handler_declares_args_and_at_most_a_context() -> None:
    with pytest.raises(InvalidActor):

        class TooMany(Gateway):
            @command("x")
            async def x(self, args: Any, ctx: Any, more: Any) -> None: ...

    with pytest.raises(InvalidActor):

        class TooFew(Gateway):
            @command("y")
            async def y(self) -> None: ...

    assert Gateway.commands["turn_on"].takes_context
    assert Gateway.commands["turn_on"].idempotent
    assert not Gateway.commands["ping"].takes_context
    assert not Gateway.commands["unpair"].idempotent


class Hub(DeviceActor[RuntimeConfig]):
    """A polled gateway: each poll reports its child c1."""

    poll_interval: ClassVar[float] = 10.0

    async def poll(self) -> list[Reading]:
        self.report([Reading("temperature_c", 21.0)], device_id="c1")
        return [Reading("connected", True)]


async def test_children_are_not_called_offline_while_the_gateways_polls_are_put_off(
    autojump_clock: trio.abc.Clock,
) -> None:
    sink = ThrottledSink()
    async with open_actor_nursery(sink) as actors:
        sup = actors.spawn(Hub, {"id": "hub"})  # window max(3 x 10 s, 60 s) = 60 s
        await wait_until(lambda: sup.child("c1") is not None)
        sink.admitting = False
        await trio.sleep(150)  # two and a half windows without a poll
        assert child_events(sink, "c1") == []
        sink.admitting = True
        await trio.sleep(100)
        assert child_events(sink, "c1") == []
        assert sup.child("c1").available  # type: ignore[union-attr]
        sup.actor.poll = trio.sleep_forever  # type: ignore[method-assign]  # now it is silent
        await wait_until(lambda: child_events(sink, "c1"), timeout=200)
        assert child_events(sink, "c1") == ["device.unavailable"]
