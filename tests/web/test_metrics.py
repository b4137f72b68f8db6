"""``GET /metrics``: Prometheus text read from the runtime at scrape time."""

from __future__ import annotations

from pathlib import Path

import trio
from prometheus_client.parser import text_string_to_metric_families

from runtime.testing import FakeCore
from tests.served import CORE_HEADERS, CORE_TOKEN, Served, env_for, serve


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape(
    served: Served, **headers: str
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await served.client.get("/metrics", headers=headers)
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    return samples(await response.get_data(as_text=True))


async def test_the_fleet_delivery_and_requests_are_exported(
    served: Served, autojump_clock: trio.abc.Clock
) -> None:
    configs = [{"id": "ok-1"}, {"id": "sick-1", "polls": ["crash"] * 20}]
    await served.post("/config/sync", {"generation": 7, "configs": configs}, headers=CORE_HEADERS)
    await trio.sleep(90)
    await served.get("/entities")
    got = await scrape(served)
    assert got[("piphi_devices", ())] == 2
    assert got[("piphi_actors", (("state", "failed"),))] == 1
    assert got[("piphi_actors", (("state", "running"),))] == 1
    assert got[("piphi_config_generation", ())] == 7
    assert got[("piphi_actor_restarts_total", (("config_id", "sick-1"),))] >= 5
    assert got[("piphi_actor_polls_total", (("config_id", "ok-1"),))] >= 80
    assert got[("piphi_actor_available", (("config_id", "ok-1"),))] == 1
    assert got[("piphi_delivery_delivered_total", ())] >= 80
    assert got[("piphi_polls_deferred_total", ())] == 0
    served.runtime.outbox.deferred = 3  # as Outbox.admit counts polls it put off
    assert (await scrape(served))[("piphi_polls_deferred_total", ())] == 3
    assert got[("piphi_core_link", (("state", "up"),))] == 1
    assert got[("piphi_http_requests_total", (("route", "/entities"), ("status", "200")))] == 1
    assert ("process_resident_memory_bytes", ()) in got


async def test_past_the_cap_only_aggregates(
    core: FakeCore, tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    env = env_for(tmp_path, core, PIPHI_METRICS_PER_DEVICE_CAP="3")
    async with serve(core, env) as served:
        configs = [{"id": f"d{n}"} for n in range(4)]
        await served.post("/config/sync", {"generation": 1, "configs": configs})
        await trio.sleep(5)
        got = await scrape(served)
        assert got[("piphi_devices", ())] == 4
        assert not [key for key in got if dict(key[1]).get("config_id")]


async def test_managed_mode_needs_the_token(
    core: FakeCore, tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    env = env_for(tmp_path, core, PIPHI_INTEGRATION_INTERNAL_TOKEN=CORE_TOKEN)
    async with serve(core, env) as served:
        response = await served.client.get("/metrics")
        assert response.status_code == 401
        assert (await scrape(served, **CORE_HEADERS))[("piphi_devices", ())] == 0
        bearer = {"Authorization": f"Bearer {CORE_TOKEN}"}  # as Prometheus sends it
        assert (await scrape(served, **bearer))[("piphi_devices", ())] == 0
