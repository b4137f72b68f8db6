"""``POST /command``: capabilities are what a device declares, not its command names."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import trio

from runtime import Capability, DeviceActor, Integration, Reading, RuntimeConfig, command
from runtime.testing import FakeCore
from tests.served import env_for, serve


class PlugConfig(RuntimeConfig):
    device_type: str = "plug"


class Plug(DeviceActor[PlugConfig]):
    """Declares its entity (with capabilities) and two commands."""

    poll_interval = 1.0

    async def poll(self) -> list[Reading]:
        return [Reading("switch_on", True)]

    def entities(self) -> Sequence[Mapping[str, Any]]:
        return [{"id": f"{self.config.id}:switch", "name": "Switch", "capabilities": ["switch_on"]}]

    @command("turn_on")
    async def turn_on(self, args: Mapping[str, Any]) -> dict[str, bool]:
        return {"switch_on": True}

    @command("refresh")
    async def refresh(self, args: Mapping[str, Any]) -> dict[str, bool]:
        return {"refreshed": True}


class Meter(DeviceActor[PlugConfig]):
    """Declares nothing beyond its command."""

    poll_interval = 1.0

    async def poll(self) -> list[Reading]:
        return [Reading("power_w", 5.0)]

    @command("reset")
    async def reset(self, args: Mapping[str, Any]) -> dict[str, bool]:
        return {"reset": True}


class Dimmer(Meter):
    capabilities: ClassVar[Mapping[str, Capability]] = {"brightness": Capability.actuator("%")}


PLUGS = Integration(
    id="plugs",
    name="Plugs",
    version="1.0.0",
    actors={"plug": Plug, "meter": Meter, "dimmer": Dimmer},
    domain="switch",
)


async def post(served: Any, body: dict[str, Any]) -> tuple[int, Any]:
    return await served.post("/command", body)


async def test_a_capability_is_what_the_device_declares(
    core: FakeCore, tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    async with serve(core, env_for(tmp_path, core), PLUGS) as served:
        await served.post("/config", {"id": "p1", "device_type": "plug"})
        await served.post("/config", {"id": "m1", "device_type": "meter"})
        await served.post("/config", {"id": "d1", "device_type": "dimmer"})
        await trio.sleep(2)
        # The PiPhi scaffolder's conformance fixture, verbatim but for the ids.
        status, reply = await post(
            served,
            {
                "contract_version": "automation.runtime.command.v1",
                "command": "refresh",
                "target": {"config_id": "p1", "device_id": "p1"},
                "params": {},
                "capability": "device.refresh",
                "capability_requirements": ["device.refresh"],
            },
        )
        assert (status, reply["ok"]) == (200, True), reply
        # An entity capability, and the integration's domain as a namespace.
        for capability in ("switch_on", "switch.turn_on", "turn_on", "plug.turn_on"):
            status, reply = await post(
                served, {"command": "turn_on", "config_id": "p1", "capability": capability}
            )
            assert (status, reply["ok"]) == (200, True), (capability, reply)
        # Declared, and not among them: refused.
        status, problem = await post(
            served,
            {"command": "turn_on", "config_id": "p1", "capability_requirements": ["warp_drive"]},
        )
        assert (status, problem["error"], problem["code"]) == (
            400,
            "unsupported_capability",
            "unsupported_capability",
        )
        # A class-level declaration counts as declared too.
        status, _ = await post(served, {"command": "reset", "config_id": "d1", "capability": "x"})
        assert status == 400
        status, _ = await post(
            served, {"command": "reset", "config_id": "d1", "capability": "brightness"}
        )
        assert status == 200
        # Declares nothing: never refused on capability.
        status, reply = await post(
            served, {"command": "reset", "config_id": "m1", "capability": "anything.at_all"}
        )
        assert (status, reply["ok"]) == (200, True), reply
