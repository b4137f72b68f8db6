"""runtime.testing.FakeCore itself: Core's endpoints, auth, de-duplication, bounded
records, every fault it can script, and the storage seam."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from runtime._contract.core import CONFIG_FETCH_PATH, EVENTS_PATH, TELEMETRY_PATH
from runtime.testing import FakeCore, Kind, Rejected, Trouble

HEADERS = {"X-Container-Id": "c-1", "X-PiPhi-Integration-Token": "tok"}


def reading(n: int, **fields: Any) -> dict[str, Any]:
    return {"telemetry_id": f"t-{n}", "device_id": "d", "metrics": {"seq": n}, **fields}


@pytest.fixture
async def http(fake_core: FakeCore) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=fake_core.url, headers=HEADERS, timeout=10) as client:
        yield client


async def test_serves_cores_endpoints_and_records_what_it_accepted(
    fake_core: FakeCore, http: httpx.AsyncClient
) -> None:
    fake_core.configs = [{"id": "a", "config_data": {"id": "a"}}]
    assert (await http.post(TELEMETRY_PATH, json=reading(1))).json() == {}
    assert (await http.post(EVENTS_PATH, json={"event_id": "e-1", "type": "x"})).status_code == 200
    rows = await http.get(CONFIG_FETCH_PATH, params={"container_id": "c-1"})
    assert rows.json() == fake_core.configs
    assert fake_core.telemetry() == [reading(1)]
    assert fake_core.events() == [{"event_id": "e-1", "type": "x"}]
    first = fake_core.received[0]
    assert (first.path, first.kind, first.container_id, first.token) == (
        TELEMETRY_PATH,
        "telemetry",
        "c-1",
        "tok",
    )
    assert [target for target, _ in fake_core.attempts] == [TELEMETRY_PATH, EVENTS_PATH]
    assert (fake_core.requests, fake_core.received_count, fake_core.duplicates) == (3, 2, 0)


async def test_paths_behind_a_prefix_are_cores_and_others_are_not(
    fake_core: FakeCore, http: httpx.AsyncClient
) -> None:
    assert (await http.post(f"/core{TELEMETRY_PATH}", json={})).status_code == 200
    missing = await http.post("/api/v2/nowhere", json={})
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert (await http.get(TELEMETRY_PATH)).status_code == 404
    bad = await http.post(TELEMETRY_PATH, content=b"not json")
    assert bad.status_code == 400
    assert fake_core.bad_requests == 1
    assert len(fake_core.received) == 1


async def test_auth_token_and_container_are_checked(
    fake_core: FakeCore, http: httpx.AsyncClient
) -> None:
    fake_core.token = "tok"
    fake_core.require_container = True
    async with httpx.AsyncClient(base_url=fake_core.url) as bare:
        assert (await bare.post(TELEMETRY_PATH, json=reading(1))).status_code == 401
        only_container = {"X-Container-Id": "c-1"}
        answer = await bare.post(TELEMETRY_PATH, json=reading(1), headers=only_container)
        assert answer.status_code == 401
        wrong = {**HEADERS, "X-PiPhi-Integration-Token": "stale"}
        assert (await bare.post(TELEMETRY_PATH, json=reading(1), headers=wrong)).status_code == 401
        only_token = {"X-PiPhi-Integration-Token": "tok"}
        assert (
            await bare.post(TELEMETRY_PATH, json=reading(1), headers=only_token)
        ).status_code == 401
    assert (await http.post(TELEMETRY_PATH, json=reading(1))).status_code == 200
    assert fake_core.telemetry() == [reading(1)]
    assert fake_core.attempt_count == 5


async def test_redeliveries_are_accepted_and_counted_as_duplicates(
    fake_core: FakeCore, http: httpx.AsyncClient
) -> None:
    for body in (
        reading(1),
        reading(1),
        reading(2),
        {"device_id": "no-id"},
        {"device_id": "no-id"},
    ):
        assert (await http.post(TELEMETRY_PATH, json=body)).status_code == 200
    for _ in range(2):
        await http.post(EVENTS_PATH, json={"event_id": "t-1"})  # ids are per kind
    assert fake_core.duplicates == 2  # t-1 again, e t-1 again; without an id: new
    assert len(fake_core.telemetry()) == 5, "redeliveries are in received too"


async def test_records_are_bounded_and_counted() -> None:
    core = FakeCore(limit=3, remember=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(core.serve)
        async with httpx.AsyncClient(base_url=core.url) as http:
            for n in range(5):
                await http.post(TELEMETRY_PATH, json=reading(n))
            await http.post(TELEMETRY_PATH, json=reading(0))  # forgotten: new again
            await http.post(TELEMETRY_PATH, json=reading(4))  # remembered
        assert [b["telemetry_id"] for b in core.telemetry()] == ["t-4", "t-0", "t-4"]
        assert len(core.attempts) == 3
        assert (core.received_count, core.attempt_count, core.duplicates) == (7, 7, 1)
        core.clear()
        assert (core.received_count, core.requests, len(core.received)) == (0, 0, 0)
        nursery.cancel_scope.cancel()


async def test_refusing_keeps_the_port_resets_open_connections_and_ends_by_itself(
    fake_core: FakeCore, http: httpx.AsyncClient, autojump_clock: trio.abc.Clock
) -> None:
    port = fake_core.port
    idle = await trio.open_tcp_stream("127.0.0.1", port)
    await trio.testing.wait_all_tasks_blocked()
    fake_core.set_trouble(Trouble("refuse", until=trio.current_time() + 30))
    assert fake_core.is_down
    with pytest.raises(trio.BrokenResourceError):  # ECONNRESET, not a polite FIN
        await idle.receive_some(10)
    await idle.aclose()
    with pytest.raises(httpx.ConnectError):
        await http.post(TELEMETRY_PATH, json=reading(1))
    await trio.sleep(31)
    assert (fake_core.port, fake_core.trouble.mode) == (port, "none")
    assert (await http.post(TELEMETRY_PATH, json=reading(1))).status_code == 200


async def test_down_and_up(fake_core: FakeCore, http: httpx.AsyncClient) -> None:
    await fake_core.down()
    with pytest.raises(httpx.ConnectError):
        await http.post(TELEMETRY_PATH, json=reading(1))
    await fake_core.up()
    assert (await http.post(TELEMETRY_PATH, json=reading(1))).status_code == 200
    fake_core.set_trouble(Trouble("refuse"))  # until cleared
    with pytest.raises(httpx.ConnectError):
        await http.post(TELEMETRY_PATH, json=reading(2))
    fake_core.set_trouble(Trouble())
    await trio.testing.wait_all_tasks_blocked()
    assert (await http.post(TELEMETRY_PATH, json=reading(2))).status_code == 200


@pytest.mark.parametrize("mode", ["503", "429"])
async def test_overloaded_answers_carry_retry_after_until_the_trouble_ends(
    fake_core: FakeCore, http: httpx.AsyncClient, autojump_clock: trio.abc.Clock, mode: Any
) -> None:
    fake_core.set_trouble(Trouble(mode, retry_after=7, until=trio.current_time() + 10))
    answer = await http.post(TELEMETRY_PATH, json=reading(1))
    assert (answer.status_code, answer.headers["retry-after"]) == (int(mode), "7")
    assert fake_core.overloaded == 1
    assert fake_core.telemetry() == []
    await trio.sleep(10)
    assert (await http.post(TELEMETRY_PATH, json=reading(1))).status_code == 200


async def test_slow_answers(
    fake_core: FakeCore, http: httpx.AsyncClient, autojump_clock: trio.abc.Clock
) -> None:
    fake_core.set_trouble(Trouble("slow", delay=3))
    fake_core.delay = 1
    started = trio.current_time()
    assert (await http.post(TELEMETRY_PATH, json=reading(1))).status_code == 200
    assert trio.current_time() - started == pytest.approx(4)
    with pytest.raises(httpx.ReadTimeout):
        await http.post(TELEMETRY_PATH, json=reading(2), timeout=2)


async def test_a_fixed_status_with_extra_headers_stores_nothing(
    fake_core: FakeCore, http: httpx.AsyncClient
) -> None:
    fake_core.status, fake_core.headers = 500, [("X-Why", "scripted")]
    answer = await http.post(TELEMETRY_PATH, json=reading(1))
    assert (answer.status_code, answer.headers["x-why"]) == (500, "scripted")
    assert fake_core.telemetry() == []
    assert fake_core.attempt_count == 1
    fake_core.status = 202
    assert (await http.post(TELEMETRY_PATH, json=reading(1))).status_code == 202
    assert fake_core.telemetry() == [reading(1)]


async def test_the_answer_hook_picks_a_status_per_request(
    fake_core: FakeCore, http: httpx.AsyncClient
) -> None:
    seen: list[str] = []

    def answer(path: str, body: dict[str, Any]) -> int | None:
        seen.append(path)
        return 409 if body.get("device_id") == "bad" else None

    fake_core.answer = answer
    assert (await http.post(TELEMETRY_PATH, json=reading(1, device_id="bad"))).status_code == 409
    assert (await http.post(TELEMETRY_PATH, json=reading(2))).status_code == 200
    assert seen == [TELEMETRY_PATH, TELEMETRY_PATH]
    assert [b["telemetry_id"] for b in fake_core.telemetry()] == ["t-2"]


async def test_dropping_connections(fake_core: FakeCore, http: httpx.AsyncClient) -> None:
    fake_core.set_trouble(Trouble("drop"))
    with pytest.raises(httpx.RemoteProtocolError):
        await http.post(TELEMETRY_PATH, json=reading(1))
    assert (fake_core.attempt_count, fake_core.received_count) == (1, 0)
    fake_core.set_trouble(Trouble())
    assert (await http.post(TELEMETRY_PATH, json=reading(1))).status_code == 200
    await fake_core.drop_connections()
    assert (await http.post(TELEMETRY_PATH, json=reading(2))).status_code == 200
    assert fake_core.connections == 3


class CountingCore(FakeCore):
    """A subclass storing through the seam: it counts devices and refuses one."""

    def __init__(self) -> None:
        super().__init__()
        self.devices: dict[str, int] = {}

    async def store(self, kind: Kind, payload: dict[str, Any], headers: Mapping[str, str]) -> bool:
        if payload.get("device_id") == "refused":
            raise Rejected("not this one", 422)
        new = await super().store(kind, payload, headers)
        if new:
            device = str(payload.get("device_id"))
            self.devices[device] = self.devices.get(device, 0) + 1
        return new


async def test_the_storage_seam(nursery: trio.Nursery) -> None:
    core = CountingCore()
    await nursery.start(core.serve)
    async with httpx.AsyncClient(base_url=core.url) as http:
        for body in (reading(1), reading(1), reading(2, device_id="e")):
            assert (await http.post(TELEMETRY_PATH, json=body)).status_code == 200
        refused = await http.post(TELEMETRY_PATH, json=reading(3, device_id="refused"))
    assert refused.status_code == 422
    assert refused.json()["detail"] == "not this one"
    assert core.devices == {"d": 1, "e": 1}
    assert (core.duplicates, core.bad_requests, len(core.received)) == (1, 1, 3)


async def test_what_is_not_http_is_answered_400(fake_core: FakeCore) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", fake_core.port)
    async with stream:
        await stream.send_all(b"HELLO\r\n\r\n")
        reply = b""
        while chunk := await stream.receive_some(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert fake_core.protocol_errors == 1
