"""The dev Core against a real runtime, both served by hypercorn on 127.0.0.1."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from examples.simulated_home import integration
from runtime._serve import serve
from runtime.devcore import DevCore, Trouble


@pytest.fixture
async def core(nursery: trio.Nursery, tmp_path: Path) -> DevCore:
    dev = DevCore(tmp_path / "core.db", container_id="ctr-dev", token="tok-dev")
    await nursery.start(dev.serve)
    return dev


async def start_runtime(nursery: trio.Nursery, core: DevCore, tmp_path: Path) -> str:
    env = {
        "PIPHI_CORE_BASE_URL": core.data_url,
        "PIPHI_STATE_DIR": str(tmp_path / "runtime"),
        "PIPHI_CONFIG_SNAPSHOT_PATH": str(tmp_path / "none.json"),
        "PIPHI_CONTAINER_ID": core.container_id,
        "PIPHI_INTEGRATION_INTERNAL_TOKEN": "tok-dev",
    }
    urls = await nursery.start(partial(serve, integration, env=env, host="127.0.0.1", port=0))
    return str(urls[0])


async def test_configs_pushed_from_core_become_telemetry_stored_once(
    core: DevCore, nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    runtime_url = await start_runtime(nursery, core, tmp_path)
    await core.put_config({"id": "t1", "device_type": "thermostat"})
    await core.put_config({"id": "p1", "device_type": "plug"})
    answer = await core.push(runtime_url)
    assert answer["status"] == "synced"
    assert answer["generation"] == 1
    assert answer["active_config_ids"] == ["p1", "t1"]
    await trio.sleep(5)
    stored = await core.telemetry(device_id="t1")
    assert len(stored) >= 4
    assert {t["container_id"] for t in stored} == {"ctr-dev"}
    assert {t["config_id"] for t in stored} == {"t1"}
    stats = await core.stats()
    assert stats["devices_reporting"] == 2
    configured = await core.events(event_type="device.configured")
    assert {e["device_id"] for e in configured} == {"t1", "p1"}
    assert (await core.remove_config("p1")) is True
    answer = await core.push(runtime_url)
    assert (answer["generation"], answer["removed"]) == (2, ["p1"])


async def test_auth_is_checked(core: DevCore, autojump_clock: trio.abc.Clock) -> None:
    async with httpx.AsyncClient(base_url=core.data_url) as http:
        body = {"device_id": "d", "telemetry_id": "x1", "metrics": {}}
        path = "/api/v2/integrations/telemetry"
        assert (await http.post(path, json=body)).status_code == 401
        assert (
            await http.post(path, json=body, headers={"X-Container-Id": "c"})
        ).status_code == 401
        ok = {"X-Container-Id": "c", "X-PiPhi-Integration-Token": "tok-dev"}
        assert (await http.post(path, json=body, headers=ok)).status_code == 200
        assert (await http.post(path, json=body, headers=ok)).status_code == 200
    stats = await core.stats()
    assert (stats["telemetry"], stats["duplicates"]) == (1, 1)


async def test_trouble_is_survived_without_loss(
    core: DevCore, nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    runtime_url = await start_runtime(nursery, core, tmp_path)
    await core.put_config({"id": "t1", "device_type": "thermostat"})
    await core.push(runtime_url)
    await trio.sleep(3)
    core.set_trouble(Trouble(mode="refuse", until=trio.current_time() + 20))
    await trio.sleep(5)
    async with httpx.AsyncClient(base_url=core.data_url) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get("/api/v2/integrations/config/fetch/all/by/container/internal")
    await trio.sleep(20)
    core.set_trouble(Trouble(mode="503", retry_after=2, until=trio.current_time() + 10))
    await trio.sleep(15)
    core.set_trouble(Trouble(mode="slow", delay=3, until=trio.current_time() + 10))
    await trio.sleep(30)
    async with httpx.AsyncClient(base_url=runtime_url, headers=core.runtime_headers()) as http:
        delivery = (await http.get("/diagnostics")).json()["diagnostics"]["delivery"]
    stored = await core.telemetry(device_id="t1")
    events = await core.events()
    assert len({t["telemetry_id"] for t in stored}) == len(stored)
    assert len(stored) >= 70, "one reading a second for ~73 s"
    assert (delivery["queue_depth"], delivery["spool_depth"], delivery["dropped"]) == (0, 0, 0)
    assert len(stored) + len(events) == delivery["accepted"], "nothing accepted was lost"
    assert delivery["retried"] > 0
    assert (await core.stats())["refused"] > 0
