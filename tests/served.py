"""An integration served in process against a fake Core: what the web tests share."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio
import trio.testing
from pydantic import SecretStr

from runtime import DeviceActor, Integration, Reading, RuntimeConfig
from runtime._web import RUNTIME_KEY
from runtime.lowlevel import Runtime, open_runtime
from runtime.testing import FakeCore
from tests.helpers import PatientProbe, Probe

SECRET = "hunter2-very-secret"
CORE_TOKEN = "core-token-abc123"


class PushConfig(RuntimeConfig):
    api_key: SecretStr | None = None


class Push(DeviceActor[PushConfig]):
    async def run(self) -> None:
        n = 0
        while True:
            n += 1
            self.report([Reading("count", n)])
            await trio.sleep(1)


async def discover(inputs: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"id": "found-1", "host": inputs.get("host"), "password": inputs.get("password")}]


INTEGRATION = Integration(
    id="test-int",
    name="Test Integration",
    version="1.2.3",
    actors={"probe": Probe, "push": Push},
    select_field="device_type",
    actor=Probe,
    discover=discover,
)


async def slow_discover(inputs: Mapping[str, Any]) -> list[dict[str, Any]]:
    await trio.sleep(float(inputs.get("sleep", 0)))
    return [{"id": "found-slowly"}]


SLOW = Integration(
    id="slow-int",
    name="Slow Integration",
    version="1.0.0",
    actor=PatientProbe,
    discover=slow_discover,
)
"""Routes as slow as a device makes them: polls of a minute at most, ``echo`` sleeping as
asked, discovery sleeping ``inputs["sleep"]`` seconds (``python -m runtime serve
tests.served:SLOW``)."""


@attrs.define
class Served:
    client: Any
    runtime: Runtime
    core: FakeCore

    async def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        response = await self.client.get(path, **kw)
        return response.status_code, await response.get_json()

    async def post(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        response = await self.client.post(path, json=body, **kw)
        return response.status_code, await response.get_json()

    async def post_raw(self, path: str, data: bytes) -> tuple[int, Any]:
        headers = {"content-type": "application/json"}
        response = await self.client.post(path, data=data, headers=headers)
        return response.status_code, await response.get_json()


def env_for(tmp_path: Path, core: FakeCore, **extra: str) -> dict[str, str]:
    return {
        "PIPHI_CORE_BASE_URL": core.url,
        "PIPHI_STATE_DIR": str(tmp_path / "state"),
        "PIPHI_CONFIG_SNAPSHOT_PATH": str(tmp_path / "no-mount.json"),
        **extra,
    }


@asynccontextmanager
async def serve(
    core: FakeCore, env: dict[str, str], integration: Integration = INTEGRATION
) -> AsyncIterator[Served]:
    app = integration.app()
    async with open_runtime(integration, env=env) as rt:
        app.extensions[RUNTIME_KEY] = rt
        async with app.test_app() as test_app:
            yield Served(test_app.test_client(), rt, core)


CORE_HEADERS = {"X-Container-Id": "ctr-1", "X-PiPhi-Integration-Token": CORE_TOKEN}


def snapshot(generation: int, *configs: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"generation": generation, "configs": list(configs), **extra}


@asynccontextmanager
async def fresh_served() -> AsyncIterator[Served]:
    """A Core and a runtime of the example's own. Hypothesis runs every example in a new
    trio run, but pytest-trio hands each the fixture values of the first, whose nurseries
    have closed by then (so a config that spawns an actor got a 500)."""
    with tempfile.TemporaryDirectory() as tmp:
        async with trio.open_nursery() as nursery:
            core = FakeCore()
            await nursery.start(core.serve)
            async with serve(core, env_for(Path(tmp), core)) as served:
                yield served
            nursery.cancel_scope.cancel()
