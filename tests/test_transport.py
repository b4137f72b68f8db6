from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from runtime._transport import H11Transport
from runtime.testing import FakeCore

PATH = "/api/v2/integrations/telemetry"


@pytest.fixture
async def http(core: FakeCore) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=core.url, transport=H11Transport(2), timeout=2.0
    ) as client:
        yield client


async def test_requests_reuse_kept_alive_connections(
    core: FakeCore, http: httpx.AsyncClient
) -> None:
    for n in range(20):
        response = await http.post(PATH, json={"n": n}, headers={"X-Container-Id": "c"})
        assert response.status_code == 200
        assert response.json() == {}
    assert core.connections == 1
    assert [r.body["n"] for r in core.received] == list(range(20))
    assert {r.container_id for r in core.received} == {"c"}


async def test_concurrency_is_bounded_by_the_connection_count(
    core: FakeCore, http: httpx.AsyncClient, autojump_clock: trio.abc.Clock
) -> None:
    core.delay = 0.5

    async def post(n: int) -> None:
        await http.post(PATH, json={"n": n}, timeout=httpx.Timeout(2.0, pool=None))

    async with trio.open_nursery() as nursery:
        for n in range(10):
            nursery.start_soon(post, n)
    assert core.most_at_once <= 2
    assert len(core.received) == 10


async def test_a_connection_the_server_closed_is_replaced_transparently(
    core: FakeCore, http: httpx.AsyncClient
) -> None:
    assert (await http.post(PATH, json={"n": 1})).status_code == 200
    await core.drop_connections()
    assert (await http.post(PATH, json={"n": 2})).status_code == 200
    assert [r.body["n"] for r in core.received] == [1, 2]
    assert core.connections == 2


async def test_errors_are_httpx_errors(
    core: FakeCore, http: httpx.AsyncClient, autojump_clock: trio.abc.Clock
) -> None:
    core.delay = 5
    with pytest.raises(httpx.ReadTimeout):
        await http.post(PATH, json={})
    await core.down()
    with pytest.raises(httpx.ConnectError):
        await http.post(PATH, json={})


async def test_status_headers_and_bodies_come_through(
    core: FakeCore, http: httpx.AsyncClient
) -> None:
    core.status = 503
    core.headers = [("Retry-After", "3")]
    response = await http.get(
        "/api/v2/integrations/config/fetch/all/by/container/internal?container_id=x"
    )
    assert response.status_code == 503
    assert response.headers["retry-after"] == "3"
    core.status = 200
    core.configs = [{"id": "a"}]
    response = await http.get("/api/v2/integrations/config/fetch/all/by/container/internal")
    assert response.json() == [{"id": "a"}]


async def test_only_plain_http() -> None:
    async with httpx.AsyncClient(transport=H11Transport()) as client:
        with pytest.raises(httpx.UnsupportedProtocol):
            await client.get("https://core.example/health")
    with pytest.raises(ValueError, match="connections"):
        H11Transport(0)


async def test_waiting_for_a_connection_is_bounded(
    core: FakeCore, http: httpx.AsyncClient, autojump_clock: trio.abc.Clock
) -> None:
    core.delay = 1.5
    outcomes: list[str] = []

    async def post() -> None:
        try:
            await http.post(PATH, json={}, timeout=httpx.Timeout(2.0, pool=0.5))
            outcomes.append("ok")
        except httpx.PoolTimeout:
            outcomes.append("pool_timeout")

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(post)
    assert sorted(outcomes) == ["ok", "ok", "pool_timeout"]
