"""``/state`` refresh receipts: a fleet with push actors gives one consistent receipt."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import trio

from runtime import DeviceActor, Integration, Reading, RuntimeConfig, command
from runtime.testing import FakeCore
from tests.helpers import Probe
from tests.served import Push, Served, env_for, serve

testkit = pytest.importorskip("piphi_runtime_testkit_python")

MIXED = Integration(
    id="mixed", name="Mixed", version="1.0.0", actors={"probe": Probe, "push": Push}
)


async def test_push_actors_are_not_applicable_not_failures(
    core: FakeCore, tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    async with serve(core, env_for(tmp_path, core), MIXED) as served:
        await served.post("/config", {"id": "poll-1", "device_type": "probe"})
        await served.post("/config", {"id": "push-1", "device_type": "push"})
        await trio.sleep(2)
        status, body = await served.get(
            "/state", query_string={"refresh": "true", "refresh_request_id": "r-1"}
        )
        assert status == 200
        testkit.assert_state_refresh_response(body, request_id="r-1")
        receipt = body["refresh"]
        assert (receipt["performed"], receipt["status"], receipt["error"]) == (
            True,
            "refreshed",
            None,
        )
        outcomes = {o["config_id"]: o["status"] for o in receipt["devices"]}
        assert outcomes == {"poll-1": "refreshed", "push-1": "not_applicable"}


async def test_a_refresh_that_read_nothing_says_so(
    core: FakeCore, tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    async with serve(core, env_for(tmp_path, core), MIXED) as served:
        await served.post("/config", {"id": "push-1", "device_type": "push"})
        await served.post("/config", {"id": "down-1", "device_type": "probe", "then": "down"})
        await trio.sleep(2)
        _, body = await served.get(
            "/state",
            query_string={"refresh": "true", "refresh_request_id": "r-2", "config_id": "push-1"},
        )
        receipt = body["refresh"]
        assert (receipt["performed"], receipt["status"]) == (False, "unsupported")
        _, body = await served.get(
            "/state", query_string={"refresh": "true", "refresh_request_id": "r-3"}
        )
        receipt = body["refresh"]
        assert (receipt["performed"], receipt["status"], receipt["error"]) == (
            False,
            "failed",
            "failed",
        )
        assert {o["config_id"]: o["status"] for o in receipt["devices"]} == {
            "down-1": "failed",
            "push-1": "not_applicable",
        }


async def test_entities_are_paged_by_config_id_on_request(
    served: Served, autojump_clock: trio.abc.Clock
) -> None:
    await served.post(
        "/config/sync", {"generation": 1, "configs": [{"id": f"d{n}"} for n in range(5)]}
    )
    _, everything = await served.get("/entities")
    assert [e["config_id"] for e in everything["entities"]] == ["d0", "d1", "d2", "d3", "d4"]
    assert everything["page"] == {"devices": 5, "offset": 0, "limit": None, "next_offset": None}
    _, page = await served.get("/entities", query_string={"offset": "1", "limit": "2"})
    assert [e["config_id"] for e in page["entities"]] == ["d1", "d2"]
    assert page["page"]["next_offset"] == 3
    status, problem = await served.get("/entities", query_string={"limit": "0"})
    assert (status, problem["code"]) == (400, "bad_query_argument")


class SwitchConfig(RuntimeConfig):
    poll_interval_seconds: float = 5.0


class Switch(DeviceActor[SwitchConfig]):
    """A switch someone can also flip by hand: ``self.position`` is the real world."""

    position = False

    async def poll(self) -> list[Reading]:
        return [Reading("switch_on", type(self).position), Reading("power_w", 3.5)]

    @command("turn_on")
    async def turn_on(self, args: Mapping[str, Any]) -> dict[str, bool]:
        type(self).position = True
        self.publish_state({"switch_on": True, "mode": "manual"})
        return {"switch_on": True}


async def test_the_latest_value_wins_per_key_whichever_path_it_came_by(
    core: FakeCore, tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    integration = Integration(id="switches", name="Switches", version="1", actor=Switch)
    async with serve(core, env_for(tmp_path, core), integration) as served:
        await served.post("/config", {"id": "sw"})
        await trio.sleep(6)
        status, _ = await served.post("/command", {"command": "turn_on", "config_id": "sw"})
        assert status == 200
        _, body = await served.get("/state")
        assert body["entries"]["sw"]["latest_state"]["switch_on"] is True
        Switch.position = False  # switched off by hand; the next read says so
        _, body = await served.get(
            "/state", query_string={"refresh": "true", "refresh_request_id": "r-off"}
        )
        assert body["refresh"]["status"] == "refreshed"
        assert body["entries"]["sw"]["latest_state"] == {
            "switch_on": False,  # the newer reading, not the older published value
            "mode": "manual",  # published only: kept
            "power_w": 3.5,
        }
