"""The dev Core against a real runtime, through the runtime.testing plugin's fixtures."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import trio

from examples.simulated_home import integration
from runtime.devcore import DevCore, Trouble
from runtime.testing import (
    assert_entity_shape,
    assert_event_sent,
    assert_refresh_receipt,
    assert_telemetry_sent,
    config_payload,
)


async def test_configs_pushed_from_core_become_telemetry_stored_once(
    devcore: DevCore, run_integration: Any, autojump_clock: trio.abc.Clock
) -> None:
    async with run_integration(integration) as rt:
        answer = await rt.configure(
            config_payload("t1", device_type="thermostat"),
            config_payload("p1", device_type="plug"),
        )
        assert (answer["status"], answer["generation"]) == ("synced", 1)
        assert answer["active_config_ids"] == ["p1", "t1"]
        await trio.sleep(5)
        stored = await assert_telemetry_sent(
            devcore, device_id="t1", metric="temperature_c", at_least=4
        )
        assert {t["container_id"] for t in stored} == {devcore.container_id}
        await assert_event_sent(devcore, "device.configured", device_id="p1")
        assert (await devcore.stats())["devices_reporting"] == 2

        entities = (await rt.http.get("/entities")).json()["entities"]
        for entity in entities:
            assert_entity_shape(entity)
        state = (await rt.http.get("/state?refresh=true&refresh_request_id=r-1")).json()
        assert_refresh_receipt(state, "r-1")

        assert (await devcore.remove_config("p1")) is True
        answer = await devcore.push(rt.url)
        assert (answer["generation"], answer["removed"]) == (2, ["p1"])


async def test_auth_is_checked(devcore: DevCore, autojump_clock: trio.abc.Clock) -> None:
    async with httpx.AsyncClient(base_url=devcore.data_url) as http:
        body = {"device_id": "d", "telemetry_id": "x1", "metrics": {}}
        path = "/api/v2/integrations/telemetry"
        assert (await http.post(path, json=body)).status_code == 401
        assert (
            await http.post(path, json=body, headers={"X-Container-Id": "c"})
        ).status_code == 401
        ok = devcore.runtime_headers()
        assert (await http.post(path, json=body, headers=ok)).status_code == 200
        assert (await http.post(path, json=body, headers=ok)).status_code == 200
    stats = await devcore.stats()
    assert (stats["telemetry"], stats["duplicates"]) == (1, 1)


async def test_trouble_is_survived_without_loss(
    devcore: DevCore, run_integration: Any, autojump_clock: trio.abc.Clock
) -> None:
    async with run_integration(integration) as rt:
        await rt.configure(config_payload("t1", device_type="thermostat"))
        await trio.sleep(3)
        # Overloaded first, while the link is up, so the next delivery meets the 503s.
        devcore.set_trouble(Trouble(mode="503", retry_after=2, until=trio.current_time() + 10))
        await trio.sleep(15)
        devcore.set_trouble(Trouble(mode="refuse", until=trio.current_time() + 20))
        await trio.sleep(5)
        async with httpx.AsyncClient(base_url=devcore.data_url) as http:
            with pytest.raises(httpx.ConnectError):
                await http.get("/api/v2/integrations/config/fetch/all/by/container/internal")
        await trio.sleep(20)
        devcore.set_trouble(Trouble(mode="slow", delay=3, until=trio.current_time() + 10))
        await trio.sleep(60)
        delivery = (await rt.http.get("/diagnostics")).json()["diagnostics"]["delivery"]
    stored = await devcore.telemetry(device_id="t1")
    events = await devcore.events()
    assert len({t["telemetry_id"] for t in stored}) == len(stored)
    assert len(stored) >= 100, "one reading a second for ~103 s"
    assert (delivery["queue_depth"], delivery["spool_depth"], delivery["dropped"]) == (0, 0, 0)
    assert len(stored) + len(events) == delivery["accepted"], "nothing accepted was lost"
    assert delivery["retried"] > 0
    assert (await devcore.stats())["refused"] > 0


async def test_the_admin_api_answers_when_trouble_ends_as_a_utc_moment(
    devcore: DevCore, autojump_clock: trio.abc.Clock
) -> None:
    async with httpx.AsyncClient(base_url=devcore.admin_url) as http:
        answer = (await http.post("/admin/trouble", json={"mode": "503", "seconds": 30})).json()
        until = datetime.fromisoformat(answer["until"])
        assert until.tzinfo is not None
        assert timedelta(seconds=25) < until - datetime.now(UTC) <= timedelta(seconds=30)
        answer = (await http.post("/admin/trouble", json={"mode": "none"})).json()
        assert (answer["mode"], answer["until"]) == ("none", None)
