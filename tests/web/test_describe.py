"""``/ui-config`` per device type, and the manifest's capabilities derived."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import trio
from pydantic import SecretStr

from runtime import Capability, DeviceActor, Integration, Reading, RuntimeConfig, command


class HubConfig(RuntimeConfig):
    api_key: SecretStr
    host: str


class MeterConfig(RuntimeConfig):
    port: int
    baud: int = 9600


class PlugConfig(RuntimeConfig):
    host: str


class Hub(DeviceActor[HubConfig]):
    async def poll(self) -> list[Reading]:
        return []


class Meter(DeviceActor[MeterConfig]):
    capabilities: ClassVar[Mapping[str, Capability]] = {"energy_kwh": Capability.sensor("kWh")}

    async def poll(self) -> list[Reading]:
        return []


class Plug(DeviceActor[PlugConfig]):
    capabilities: ClassVar[Mapping[str, Capability]] = {"switch_on": Capability.actuator()}

    async def poll(self) -> list[Reading]:
        return []

    @command("turn_on", timeout=4)
    async def turn_on(self, args: Mapping[str, Any]) -> None:
        return None


HOME = Integration(
    id="home",
    name="Home",
    version="1.0.0",
    actors={"hub": Hub, "meter": Meter, "plug": Plug},
    manifest={"capabilities": {"scene": {"kind": "action"}}, "maintainer": "me"},
)


async def get(integration: Integration, path: str) -> Any:
    response = await integration.app().test_client().get(path)
    assert response.status_code == 200
    return await response.get_json()


async def test_one_form_per_device_type(autojump_clock: trio.abc.Clock) -> None:
    body = await get(HOME, "/ui-config")
    form = body["schema"]
    assert form["properties"]["device_type"]["enum"] == ["hub", "meter", "plug"]
    assert form["required"] == ["device_type"]
    branches = {b["properties"]["device_type"]["const"]: b for b in form["oneOf"]}
    assert branches["hub"]["required"] == ["device_type", "api_key", "host"]
    assert branches["meter"]["required"] == ["device_type", "port"]
    assert branches["plug"]["required"] == ["device_type", "host"]
    assert "api_key" not in branches["plug"]["properties"]
    assert "port" not in branches["hub"]["properties"]
    assert branches["hub"]["properties"]["api_key"]["writeOnly"] is True
    assert body["uiSchema"]["api_key"] == {"ui:widget": "password"}
    assert body == await get(HOME, "/ui")


async def test_one_device_type_is_one_flat_form(autojump_clock: trio.abc.Clock) -> None:
    single = Integration(id="hub", name="Hub", version="1", actor=Hub)
    form = (await get(single, "/ui-config"))["schema"]
    assert "oneOf" not in form
    assert form["required"] == ["api_key", "host"]


async def test_the_manifest_capabilities_come_from_the_classes(
    autojump_clock: trio.abc.Clock,
) -> None:
    manifest = await get(HOME, "/manifest.json")
    assert manifest["capabilities"] == {
        "energy_kwh": {"kind": "sensor", "unit": "kWh"},
        "switch_on": {"kind": "actuator"},
        "turn_on": {"kind": "action"},
        "scene": {"kind": "action"},  # the author's, laid over
    }
    assert manifest["commands"] == {"turn_on": {"description": "turn on", "timeout_ms": 4000}}
    assert manifest["maintainer"] == "me"
    assert {"manifest_version", "id", "name", "version", "runtime", "api"} <= manifest.keys()
