from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from runtime import ActorState, DeviceActor, Reading, RuntimeConfig
from runtime import _registry as registry_module
from runtime._supervisor import RECENT_EVENTS
from runtime.lowlevel import ActorNursery, Registry

from .helpers import wait_until


class Lamp(DeviceActor[RuntimeConfig]):
    poll_interval = 1.0

    async def poll(self) -> list[Reading]:
        self.publish_state({"brightness": 40})
        self.emit_event("lamp.dimmed", {"to": 40})
        return [Reading("brightness", 40, "%")]

    def entities(self) -> Sequence[Mapping[str, Any]]:
        return [{"id": f"{self.config.id}-light", "entity_type": "light"}]


async def test_a_slice_shows_what_its_actor_published(
    actors: ActorNursery, autojump_clock: Any
) -> None:
    registry = Registry(actors)
    actors.spawn(Lamp, {"id": "lamp-1", "configId": "cfg-lamp"})
    await wait_until(lambda: (s := registry.get("lamp-1")) is not None and s.recent_events)
    by_id, by_config_id = registry.get("lamp-1"), registry.get("cfg-lamp")
    assert by_id is not None and by_config_id is not None
    assert by_id.identity == by_config_id.identity
    assert by_id.latest_state == {"brightness": 40} and by_id.state_updated is not None
    assert by_id.entities == ({"id": "lamp-1-light", "entity_type": "light"},)
    assert by_id.recent_events[0].event_type == "lamp.dimmed"
    assert by_id.health.state is ActorState.RUNNING and by_id.actor == "Lamp"
    with pytest.raises(TypeError):
        by_id.latest_state["brightness"] = 0  # type: ignore[index]
    assert [s.identity.id for s in registry] == ["lamp-1"]


async def test_the_event_ring_is_bounded(actors: ActorNursery, autojump_clock: Any) -> None:
    registry = Registry(actors)
    actors.spawn(Lamp, {"id": "lamp"})
    await wait_until(
        lambda: (s := registry.get("lamp")) is not None and s.health.polls > RECENT_EVENTS + 5
    )
    slice_ = registry.get("lamp")
    assert slice_ is not None and len(slice_.recent_events) == RECENT_EVENTS


async def test_a_stopped_actor_has_no_slice(actors: ActorNursery, autojump_clock: Any) -> None:
    registry = Registry(actors)
    lamp = actors.spawn(Lamp, {"id": "lamp"})
    await lamp.stop()
    assert registry.get("lamp") is None and len(registry) == 0


async def test_select_builds_slices_only_for_matching_devices(
    actors: ActorNursery, autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = Registry(actors)
    for n in range(5):
        actors.spawn(Lamp, {"id": f"lamp-{n}", "deviceId": f"dev-{n % 2}"})
    built: list[str] = []
    original = registry_module._slice

    def counting(supervisor: Any) -> Any:
        built.append(supervisor.identity.id)
        return original(supervisor)

    monkeypatch.setattr(registry_module, "_slice", counting)
    chosen = registry.select(lambda identity: identity.device_id == "dev-1")
    assert [s.identity.id for s in chosen] == built == ["lamp-1", "lamp-3"]
    assert registry.select(lambda identity: False) == []
