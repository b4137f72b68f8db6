"""``/config``: field paths are snake_case whichever spelling the caller used."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio

from runtime import DeviceActor, Integration, Reading, RuntimeConfig
from runtime.testing import FakeCore
from tests.served import Served, env_for, serve


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


async def test_a_snapshot_must_say_its_generation_and_configs(
    served: Served, autojump_clock: trio.abc.Clock
) -> None:
    await served.post("/config/sync", {"generation": 1, "configs": [{"id": "a"}, {"id": "b"}]})
    for body in (
        {},
        {"configs": []},
        {"generation": 2},
        {"generation": True, "configs": []},
        {"generation": 2.0, "configs": []},
        {"generation": "2", "configs": []},
        {"generation": -1, "configs": []},
        {"generation": 99999999999999999999, "configs": []},
        {"generation": 2**63, "configs": []},
        {"generation": 2**53, "configs": []},
    ):
        status, problem = await served.post("/config/sync", body)
        assert (status, problem["code"]) == (422, "invalid_config"), body
        assert served.runtime.sync.active_config_ids == ("a", "b"), body
        assert served.runtime.sync.last_generation == 1
    status, answer = await served.post("/config/sync", {"generation": 2**53 - 1, "configs": []})
    assert (status, answer["removed"]) == (200, ["a", "b"]), "an explicit empty list removes all"


async def test_a_lower_generation_applies_from_another_core_or_a_later_one(
    served: Served, autojump_clock: trio.abc.Clock
) -> None:
    def snap(generation: int, *ids: str, **extra: Any) -> dict[str, Any]:
        return {"generation": generation, "configs": [{"id": i} for i in ids], **extra}

    at = "2026-12-01T10:00:00+00:00"
    await served.post("/config/sync", snap(900, "a", driver_pid=11, updated_at=at))
    _, stale = await served.post("/config/sync", snap(5, "b", driver_pid=11))
    assert stale["status"] == "stale_ignored"
    earlier = "2026-11-30T10:00:00Z"
    _, stale = await served.post("/config/sync", snap(5, "b", driver_pid=11, updated_at=earlier))
    assert stale["status"] == "stale_ignored"
    # The same Core, restored from a backup: an older counter, a newer state.
    later = "2026-12-02T10:00:00Z"
    _, applied = await served.post("/config/sync", snap(5, "b", driver_pid=11, updated_at=later))
    assert (applied["status"], applied["active_config_ids"]) == ("synced", ["b"])
    # Another Core process: its counter started over.
    _, applied = await served.post("/config/sync", snap(1, "c", driver_pid=12))
    assert (applied["status"], applied["active_config_ids"]) == ("synced", ["c"])
    assert served.runtime.sync.last_generation == 1
    # Whatever a sender without a driver_pid claimed, Core's own process is another one.
    await served.post("/config/sync", snap(2**53 - 1, "x", updated_at="9999-01-01T00:00:00Z"))
    _, applied = await served.post("/config/sync", snap(3, "d", driver_pid=12))
    assert (applied["status"], applied["active_config_ids"]) == ("synced", ["d"])


async def test_the_rule_holds_across_a_restart_and_an_old_huge_generation_is_dropped(
    core: FakeCore, tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    env = env_for(tmp_path, core)
    async with serve(core, env) as served:
        body = {"generation": 40, "driver_pid": 7, "configs": [{"id": "a"}]}
        await served.post("/config/sync", body)
    async with serve(core, env) as served:
        assert served.runtime.sync.active_config_ids == ("a",)
        _, stale = await served.post(
            "/config/sync", {"generation": 3, "driver_pid": 7, "configs": []}
        )
        assert stale["status"] == "stale_ignored"
        _, applied = await served.post(
            "/config/sync", {"generation": 3, "driver_pid": 8, "configs": []}
        )
        assert applied["status"] == "synced"
    # A copy saved by an older version with an impossible generation: the configs are
    # kept, the number is not, and Core's next snapshot applies.
    copy = Path(env["PIPHI_STATE_DIR"]) / "snapshot.json"
    copy.write_text(json.dumps({"generation": 99999999999999999999, "configs": [{"id": "z"}]}))
    async with serve(core, env) as served:
        assert served.runtime.sync.active_config_ids == ("z",)
        _, applied = await served.post("/config/sync", {"generation": 1, "configs": [{"id": "y"}]})
        assert (applied["status"], applied["active_config_ids"]) == ("synced", ["y"])


async def test_a_snapshot_of_ten_thousand_devices_fits_and_more_than_the_cap_does_not(
    served: Served, autojump_clock: trio.abc.Clock
) -> None:
    # Shaped like the dev Core's push: about 1.5 MB.
    configs = [
        {"id": f"dev-{n:05d}", "config_id": f"uuid-{n:05d}-aaaa-bbbb-cccc", "device_type": "probe",
         "container_id": "dev-container", "integration_id": "dev-integration",
         "poll_interval_seconds": 60, "polls": []}
        for n in range(10_000)
    ]  # fmt: skip
    body = json.dumps({"generation": 1, "configs": configs}).encode()
    assert len(body) > 1024 * 1024
    status, answer = await served.post_raw("/config/sync", body)
    assert (status, len(answer["added"])) == (200, 10_000)
    status, problem = await served.post_raw("/config/sync", b" " * (17 * 1024 * 1024))
    assert (status, problem["code"]) == (413, "body_too_large")
    status, problem = await served.post_raw("/command", b" " * (1024 * 1024 + 1))
    assert (status, problem["code"]) == (413, "body_too_large")


async def test_bodies_nested_too_deeply_are_refused_before_parsing(
    served: Served, autojump_clock: trio.abc.Clock
) -> None:
    for depth in (33, 1_000, 100_000):
        nested = "[" * depth + "]" * depth
        status, problem = await served.post_raw("/config", f'{{"id": "x", "v": {nested}}}'.encode())
        assert (status, problem["code"]) == (400, "too_deep"), depth
    # Brackets inside strings are text, not nesting.
    status, _ = await served.post("/config", {"id": "brackets", "label": "[[[[" * 50})
    assert status == 200
    # What is accepted persists: 30 levels, saved in the local copy.
    nested_value: Any = 1
    for _ in range(29):
        nested_value = {"k": nested_value}
    status, _ = await served.post("/config", {"id": "deep", "extra": nested_value})
    assert status == 200
    copy = json.loads((served.runtime.state_dir / "snapshot.json").read_text())
    assert {c["id"] for c in copy["configs"]} == {"brackets", "deep"}


async def test_small_things_a_hostile_or_odd_caller_hits(
    served: Served, autojump_clock: trio.abc.Clock
) -> None:
    # 405 says which methods the route takes.
    response = await served.client.get("/config")
    assert response.status_code == 405
    assert set(response.headers["Allow"].replace(" ", "").split(",")) >= {"POST"}
    assert response.content_type == "application/problem+json"
    # An id with a "/" can be removed by path.
    status, _ = await served.post("/config", {"id": "room/1"})
    assert status == 200
    status, answer = await served.post("/deconfigure/room/1")
    assert (status, answer["removed"]) == (200, True)
    # The OpenAPI document declares the token's scheme and that a config needs an id.
    _, document = await served.get("/openapi.json")
    assert "piphiToken" in document["components"]["securitySchemes"]
    schema = document["paths"]["/config"]["post"]["requestBody"]["content"]["application/json"]
    assert "id" in schema["schema"]["required"]
