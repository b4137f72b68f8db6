"""``/config``: field paths are snake_case whichever spelling the caller used."""

from __future__ import annotations

from pathlib import Path

import trio

from runtime import DeviceActor, Integration, Reading, RuntimeConfig
from runtime.testing import FakeCore
from tests.served import env_for, serve


class HubConfig(RuntimeConfig):
    api_key: str
    port_number: int = 80


class Hub(DeviceActor[HubConfig]):
    async def poll(self) -> list[Reading]:
        return []


async def test_missing_and_invalid_fields_are_named_in_snake_case(
    core: FakeCore, tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    integration = Integration(id="hub", name="Hub", version="1", actor=Hub)
    async with serve(core, env_for(tmp_path, core), integration) as served:
        status, problem = await served.post("/config", {"id": "h1", "portNumber": "x"})
        assert (status, problem["code"]) == (422, "invalid_config")
        assert sorted(e["path"] for e in problem["errors"]) == ["api_key", "port_number"]
        status, problem = await served.post(
            "/config/sync", {"generation": 1, "configs": [{"id": "h2"}]}
        )
        assert status == 200
        (rejected,) = problem["rejected"]
        assert [e["loc"] for e in rejected["errors"]] == [["api_key"]]
