"""A gateway's children on the routes (issue 13 §2): ``/state``, ``/entities``,
``/diagnostics`` and ``/command``, served in process on trio's virtual clock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from runtime import Integration
from runtime.testing import FakeCore, assert_entity_shape
from tests.helpers import Gateway, Probe, wait_until
from tests.served import Served, env_for, serve


class DeclaringGateway(Gateway):
    """Declares an entity of its own child c1; c2 and the gateway get the defaults."""

    def entities(self) -> Sequence[Mapping[str, Any]]:
        return [
            {"id": "gw:c1:switch", "name": "C1 switch", "device_id": "c1", "capabilities": ["sw"]}
        ]


GATEWAYS = Integration(
    id="gateways",
    name="Gateways",
    version="1.0.0",
    actors={"gateway": Gateway, "declaring": DeclaringGateway, "probe": Probe},
)


GW = {"id": "gw", "device_type": "gateway"}
P1 = {"id": "p1", "device_type": "probe"}


@pytest.fixture
async def gateways(core: FakeCore, tmp_path: Path) -> AsyncIterator[Served]:
    async with serve(core, env_for(tmp_path, core), GATEWAYS) as served:
        yield served


async def configure(served: Served, *configs: dict[str, Any]) -> None:
    for config in configs:
        status, answer = await served.post("/config", config)
        assert status == 200, answer


def gateway_of(served: Served, config_id: str = "gw") -> Gateway:
    supervisor = served.runtime.actors.get(config_id)
    assert supervisor is not None
    actor = supervisor.actor
    assert isinstance(actor, Gateway)
    return actor


async def test_each_child_has_a_state_entry_of_its_own(
    gateways: Served, autojump_clock: trio.abc.Clock
) -> None:
    await configure(gateways, GW, P1)
    await trio.sleep(25)
    _, body = await gateways.get("/state")
    entries = body["entries"]
    assert sorted(entries) == ["gw", "gw:c1", "gw:c2", "p1"]
    child = entries["gw:c1"]
    assert child["latest_state"] == {"temperature_c": 22, "battery": 90}
    assert (child["config_id"], child["device_id"], child["parent_device_id"]) == (
        "gw",
        "c1",
        "gw",
    )
    assert child["observed_at"] == "2026-12-07T04:11:10+00:00"  # the vendor's, of the last
    assert child["available"] is True and child["last_seen"] == child["last_updated"]
    # Ordinary devices' entries carry none of the child-only fields.
    assert sorted(entries["p1"]) == ["config_id", "device_id", "last_updated", "latest_state"]
    assert sorted(entries["gw"]) == sorted(entries["p1"])
    assert entries["gw"]["latest_state"] == {"connected": True}

    for wanted, keys in [
        ("c2", ["gw:c2"]),
        ("gw:c1", ["gw:c1"]),
        ("gw", ["gw", "gw:c1", "gw:c2"]),
    ]:
        status, body = await gateways.get("/state", query_string={"config_id": wanted})
        assert (status, sorted(body["entries"])) == (200, keys), wanted
    status, _ = await gateways.get("/state", query_string={"config_id": "gw:nope"})
    assert status == 404


async def test_each_child_has_an_entity_unless_the_actor_declares_its_own(
    gateways: Served, autojump_clock: trio.abc.Clock
) -> None:
    await configure(
        gateways,
        GW,
        {"id": "dg", "device_type": "declaring"},
        P1,
    )
    await trio.sleep(15)
    _, body = await gateways.get("/entities")
    by_id = {e["id"]: e for e in body["entities"]}
    for entity in body["entities"]:
        assert_entity_shape(entity)
    assert sorted(by_id) == [
        "dg:c2",
        "dg:dg",
        "gw:c1",
        "gw:c1:switch",
        "gw:c2",
        "gw:gw",
        "p1:p1",
    ]
    default = by_id["gw:c1"]
    assert (default["config_id"], default["device_id"], default["parent_device_id"]) == (
        "gw",
        "c1",
        "gw",
    )
    assert {"temperature_c", "battery", "turn_on"} <= set(default["capabilities"])
    assert default["metadata"]["units"] == {"battery": "%"}
    assert default["metadata"]["available"] is True
    assert [c["id"] for c in default["available_commands"]] == ["turn_on", "unpair", "ping"]
    declared = by_id["gw:c1:switch"]
    assert (declared["config_id"], declared["device_id"], declared["parent_device_id"]) == (
        "dg",
        "c1",
        "dg",
    )
    assert "parent_device_id" not in by_id["p1:p1"] and "parent_device_id" not in by_id["gw:gw"]
    assert body["capabilities"]["battery"] == {"kind": "sensor", "unit": "%"}


async def test_diagnostics_has_a_line_per_child_with_its_last_seen_age(
    gateways: Served, autojump_clock: trio.abc.Clock
) -> None:
    await configure(gateways, GW, P1)
    await trio.sleep(25)
    gateway_of(gateways).muted.add("c2")  # last heard at t=20
    await trio.sleep(65)
    _, body = await gateways.get("/diagnostics")
    records = {r["config_id"]: r for r in body["diagnostics"]["actors"]}
    assert "children" not in records["p1"]
    children = records["gw"]["children"]
    assert {k: children[k] for k in ("total", "unavailable", "stale_after_s", "max_children")} == {
        "total": 2,
        "unavailable": 1,
        "stale_after_s": 60.0,
        "max_children": 1000,
    }
    c1, c2 = children["devices"]
    assert (c1["device_id"], c1["available"], c2["device_id"], c2["available"]) == (
        "c1",
        True,
        "c2",
        False,
    )
    assert c2["last_seen_age_s"] == pytest.approx(c1["last_seen_age_s"] + 70, abs=0.05)
    assert c2["observed_at"] == "2026-12-07T04:11:10+00:00"
    _, body = await gateways.get("/diagnostics", query_string={"device_id": "c2"})
    assert [r["config_id"] for r in body["diagnostics"]["actors"]] == ["gw"]


async def test_commands_reach_children_and_the_handler_learns_the_target(
    gateways: Served, autojump_clock: trio.abc.Clock
) -> None:
    await configure(gateways, GW, P1)
    await trio.sleep(5)
    for body, target in [
        ({"target": {"device_id": "c1"}, "correlation_id": "corr-1"}, "c1"),
        ({"target": {"config_id": "gw", "device_id": "c2"}}, "c2"),
        ({"entity_id": "gw:c1", "command_id": "cmd-9"}, "c1"),
        ({"config_id": "gw"}, "gw"),
        # A child not heard since the runtime started, named with its gateway's config.
        ({"config_id": "gw", "device_id": "sleepy"}, "sleepy"),
    ]:
        status, reply = await gateways.post("/command", {"command": "turn_on", **body})
        assert (status, reply["result"]) == (200, {"device_id": target}), body
    contexts = gateway_of(gateways).contexts
    first, second, third, own, sleepy = contexts
    assert (first.config_id, first.device_id, first.entity_id) == ("gw", "c1", "gw:c1")
    assert (first.parent_device_id, first.correlation_id, first.is_child) == ("gw", "corr-1", True)
    assert (second.device_id, second.entity_id) == ("c2", "gw:c2")
    assert (third.device_id, third.correlation_id) == ("c1", "cmd-9")
    assert (own.device_id, own.parent_device_id, own.is_child) == ("gw", None, False)
    assert sleepy.is_child

    status, problem = await gateways.post(
        "/command", {"command": "turn_on", "target": {"device_id": "ghost"}}
    )
    assert (status, problem["code"]) == (404, "unknown_device")
    # Another gateway hearing a child of the same id: naming the id alone is ambiguous.
    await configure(gateways, {"id": "gw2", "device_type": "gateway"})
    await trio.sleep(5)
    status, problem = await gateways.post(
        "/command", {"command": "turn_on", "target": {"device_id": "c1"}}
    )
    assert (status, problem["code"], problem["candidates"]) == (
        409,
        "ambiguous_target",
        ["gw", "gw2"],
    )


async def test_an_idempotency_key_is_for_one_child(
    gateways: Served, autojump_clock: trio.abc.Clock
) -> None:
    await configure(gateways, GW)
    await trio.sleep(5)
    headers = {"X-PiPhi-Idempotency-Key": "k-1"}
    status, reply = await gateways.post(
        "/command", {"command": "turn_on", "target": {"device_id": "c1"}}, headers=headers
    )
    assert status == 200
    status, reply = await gateways.post(
        "/command", {"command": "turn_on", "target": {"device_id": "c1"}}, headers=headers
    )
    assert (status, reply["replayed"]) == (200, True)
    status, problem = await gateways.post(
        "/command", {"command": "turn_on", "target": {"device_id": "c2"}}, headers=headers
    )
    assert (status, problem["code"]) == (422, "idempotency_key_reused")
    assert [c.device_id for c in gateway_of(gateways).contexts] == ["c1"]
    assert gateway_of(gateways).contexts[0].idempotency_key == "k-1"


async def test_a_stale_child_says_so_on_every_route(
    gateways: Served, autojump_clock: trio.abc.Clock
) -> None:
    await configure(gateways, GW)
    await trio.sleep(5)
    gateway_of(gateways).muted.add("c1")
    await wait_until(lambda: not gateways.runtime.actors.get("gw").child("c1").available)  # type: ignore[union-attr]
    _, state = await gateways.get("/state", query_string={"config_id": "c1"})
    assert state["entries"]["gw:c1"]["available"] is False
    _, entities = await gateways.get("/entities")
    (entity,) = [e for e in entities["entities"] if e["id"] == "gw:c1"]
    assert entity["metadata"]["available"] is False
    _, events = await gateways.get("/events")
    assert [(e["event_type"], e["device_id"], e["config_id"]) for e in events["events"]][-1] == (
        "device.unavailable",
        "c1",
        "gw",
    )
