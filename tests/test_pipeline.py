"""The lanes' send path (issue 18): pre-built request heads, several requests per write on a
lane's own connection (HTTP/1.1 pipelining), a minimal parse of Core's small 2xx answers and
h11 for anything else, one long-lived deadline per lane. Real sockets on 127.0.0.1 against
``runtime.testing.FakeCore`` and its fault modes, and a raw server for odd answers."""

from __future__ import annotations

import contextlib
import json
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from runtime import DeviceIdentity, Reading
from runtime._core import CoreLane
from runtime._transport import _UNUSUAL, READ_PATIENCE, Pipeline, PipelineBroken, _parse_simple
from runtime.delivery import (
    CoreAuthRejected,
    CoreClient,
    CoreServerError,
    CoreTimeout,
    CoreUnavailable,
    OutboxSettings,
    open_outbox,
)
from runtime.lowlevel import TelemetryRecord
from runtime.testing import FakeCore, Trouble

TOKEN = "pipeline-test-token"


def body(n: int, device: str = "d") -> tuple[bool, bytes]:
    return False, json.dumps(
        {"telemetry_id": f"id-{device}-{n}", "device_id": device, "n": n}
    ).encode()


def record(device: int, seq: int) -> TelemetryRecord:
    identity = DeviceIdentity(
        id=f"d{device}",
        config_id=f"cfg-{device}",
        device_id=f"d{device}",
        container_id="c-1",
        integration_id="int-1",
    )
    return TelemetryRecord(identity, f"d{device}", (Reading("seq", seq),), 1.8e9 + seq)


@pytest.fixture
async def client(core: FakeCore) -> AsyncIterator[CoreClient]:
    async with CoreClient(core.url, container_id="c-1", token=TOKEN, timeout=2.0) as c:
        yield c


@pytest.fixture
def batch_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of items in each batch a lane posts, in order."""
    sizes: list[int] = []
    real_post = CoreLane.post

    async def counting(lane: CoreLane, items: list[tuple[bool, bytes]]) -> list[Any]:
        sizes.append(len(items))
        return await real_post(lane, items)

    monkeypatch.setattr(CoreLane, "post", counting)
    return sizes


async def post(lane: CoreLane, items: list[tuple[bool, bytes]]) -> list[Any]:
    """``lane.post`` under a guard of its own, as an outbox lane holds one."""
    with trio.CancelScope() as guard:
        lane.guard = guard
        return await lane.post(items)
    return lane.timed_out()


# -- the plain case --------------------------------------------------------------------------


async def test_a_batch_goes_out_in_order_on_one_connection_with_the_auth_headers(
    core: FakeCore, client: CoreClient
) -> None:
    async with client.lane() as lane:
        assert lane.pipelined
        assert await post(lane, [body(n) for n in range(10)]) == [None] * 10
        assert await post(lane, [body(n) for n in range(10, 15)]) == [None] * 5
        assert await post(lane, [(True, b'{"event_id": "e1"}')]) == [None]
    assert [r.body["n"] for r in core.received if r.kind == "telemetry"] == list(range(15))
    assert [r.body["event_id"] for r in core.received if r.kind == "event"] == ["e1"]
    assert {(r.container_id, r.token) for r in core.received} == {("c-1", TOKEN)}
    assert core.connections == 1


async def test_a_stale_kept_alive_connection_is_replaced_transparently(
    core: FakeCore, client: CoreClient
) -> None:
    async with client.lane() as lane:
        assert await post(lane, [body(1)]) == [None]
        await core.drop_connections()
        assert await post(lane, [body(2), body(3)]) == [None, None]
    assert [r.body["n"] for r in core.received] == [1, 2, 3]
    assert core.connections == 2


async def test_a_changed_token_is_used_by_the_next_batch(
    core: FakeCore, client: CoreClient
) -> None:
    async with client.lane() as lane:
        await post(lane, [body(1)])
        client.set_auth(token="another-token")
        await post(lane, [body(2)])
    assert [r.token for r in core.received] == [TOKEN, "another-token"]


# -- faults, answer by answer -----------------------------------------------------------------


async def test_a_503_in_the_middle_of_a_batch_fails_only_its_item(
    core: FakeCore, client: CoreClient
) -> None:
    core.answer = lambda path, payload: 503 if payload["n"] == 2 else None
    core.headers = [("Retry-After", "7")]
    async with client.lane() as lane:
        results = await post(lane, [body(n) for n in range(5)])
    assert [type(r).__name__ if r else None for r in results] == [
        None,
        None,
        "CoreServerError",
        None,
        None,
    ]
    assert isinstance(results[2], CoreServerError) and results[2].retry_after == 7.0
    assert [r.body["n"] for r in core.received] == [0, 1, 3, 4]


async def test_401_answers_every_item_and_never_echoes_the_token(
    core: FakeCore, client: CoreClient
) -> None:
    core.token = "the-right-token"
    async with client.lane() as lane:
        results = await post(lane, [body(n) for n in range(3)])
    assert all(isinstance(r, CoreAuthRejected) for r in results)
    assert TOKEN not in str([r.to_dict() for r in results])


async def test_a_refused_connection_is_core_unavailable(core: FakeCore, client: CoreClient) -> None:
    await core.down()
    async with client.lane() as lane:
        (result,) = await post(lane, [body(n) for n in range(3)])
    assert isinstance(result, CoreUnavailable)
    assert result.code == "core_unavailable"


async def test_a_dropped_connection_fails_the_first_unanswered_item(
    core: FakeCore, client: CoreClient
) -> None:
    async with client.lane() as lane:
        assert await post(lane, [body(0)]) == [None]
        core.set_trouble(Trouble("drop"))
        (result,) = await post(lane, [body(n) for n in range(1, 4)])
        assert isinstance(result, CoreUnavailable)
        core.set_trouble(Trouble())
        assert await post(lane, [body(n) for n in range(1, 4)]) == [None] * 3
    assert [r.body["n"] for r in core.received] == [0, 1, 2, 3]


async def test_a_slow_core_times_out_under_the_lanes_guard(
    core: FakeCore, client: CoreClient, autojump_clock: trio.abc.Clock
) -> None:
    async with client.lane() as lane:
        assert await post(lane, [body(0)]) == [None]
        core.set_trouble(Trouble("slow", delay=10.0))
        started = trio.current_time()
        results = await post(lane, [body(n) for n in range(1, 4)])
        waited = trio.current_time() - started
        (result,) = results
        assert isinstance(result, CoreTimeout) and result.retryable
        assert 0.75 * 2.0 <= waited <= 2.0 + 0.01
        core.set_trouble(Trouble())
        assert await post(lane, [body(9)]) == [None]


# -- odd answers: h11 reads them --------------------------------------------------------------


Handler = Callable[[trio.SocketStream], Awaitable[None]]


async def raw_server(nursery: trio.Nursery, handler: Handler) -> str:
    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"


async def requests_in(stream: trio.SocketStream, count: int) -> bytes:
    data = b""
    while data.count(b"\r\n\r\n") < count or not data.endswith(b"}"):
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("patience", [READ_PATIENCE, 10.0])  # cut off reading, or waiting
async def test_a_write_cut_off_by_the_deadline_never_reuses_the_connection(
    nursery: trio.Nursery,
    autojump_clock: trio.abc.Clock,
    monkeypatch: pytest.MonkeyPatch,
    patience: float,
) -> None:
    # A Core that stops reading: the write blocks and the guard cancels it mid-request.
    # Kept open, the connection would hand answers to that batch to the next one.
    monkeypatch.setattr("runtime._transport.READ_PATIENCE", patience)
    connections = 0

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        if connections == 1:
            await trio.sleep_forever()
        await requests_in(stream, 1)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
        await trio.sleep_forever()

    url = await raw_server(nursery, handler)
    huge = (False, b'{"pad":"' + b"x" * 32_000_000 + b'"}')  # more than the socket buffers
    async with CoreClient(url, container_id="c-1", timeout=2.0) as client, client.lane() as lane:
        (result,) = await post(lane, [huge])
        assert isinstance(result, CoreTimeout)
        assert await post(lane, [body(1)]) == [None]
    assert connections == 2


async def test_a_batch_whose_answers_outgrow_the_socket_buffers_is_read_while_written(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    # Like most servers, this one reads a request, writes its answer whole, then reads on.
    # A batch written whole before any answer is read would wait on it while it waits on
    # the lane (about 1 MB of requests, 8 MB of answers: far past the buffers).
    connections = 0
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: 8192\r\n\r\n" + b"x" * 8192

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        data = b""
        while True:
            end = data.find(b"\r\n\r\n")
            if end >= 0:
                head = data[:end].lower()
                length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
                if len(data) >= end + 4 + length:
                    data = data[end + 4 + length :]
                    await stream.send_all(answer)
                    continue
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            data += chunk

    url = await raw_server(nursery, handler)
    items = [(False, b'{"n":%d,"pad":"%s"}' % (n, b"p" * 1000)) for n in range(1000)]
    async with CoreClient(url, container_id="c-1", timeout=2.0) as client, client.lane() as lane:
        with trio.fail_after(60):
            results = await post(lane, items)
            assert results == [None] * 1000
            assert await post(lane, items[:3]) == [None] * 3  # the connection is still good
    assert connections == 1


async def test_a_large_batch_cut_off_by_the_server_keeps_the_answers_that_came(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await requests_in(stream, 10)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}" * 10)
        await stream.aclose()

    url = await raw_server(nursery, handler)
    items = [(False, b'{"n":%d,"pad":"%s"}' % (n, b"p" * 1000)) for n in range(1000)]
    async with CoreClient(url, container_id="c-1", timeout=2.0) as client, client.lane() as lane:
        with trio.fail_after(60):
            results = await post(lane, items)
    assert results[:10] == [None] * 10
    assert len(results) == 11 and isinstance(results[10], CoreUnavailable)


async def test_answers_that_come_before_the_batch_is_all_written_close_the_connection(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    # The rest of the batch would reach the server after it answered: never reuse that.
    connections = 0

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        if connections == 1:
            await stream.receive_some(1)
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}" * 1000)
            await trio.sleep_forever()
        await requests_in(stream, 1)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
        await trio.sleep_forever()

    url = await raw_server(nursery, handler)
    items = [(False, b'{"n":%d,"pad":"%s"}' % (n, b"p" * 32_000)) for n in range(1000)]
    async with CoreClient(url, container_id="c-1", timeout=2.0) as client, client.lane() as lane:
        with trio.fail_after(60):
            assert await post(lane, items) == [None] * 1000
            assert await post(lane, [body(1)]) == [None]
    assert connections == 2


@pytest.mark.parametrize("later", [1.0, 0.0])  # while idle, or in the answer's own write
async def test_bytes_no_request_asked_for_never_answer_the_next_batch(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock, later: float
) -> None:
    # A server's 408 on an idle keep-alive connection would otherwise be read as the first
    # answer of the next batch, and that item refused for good.
    connections = 0

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        await requests_in(stream, 1)
        ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"
        timeout = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\r\n"
        if connections > 1:
            await stream.send_all(ok)
        elif later:
            await stream.send_all(ok)
            await trio.sleep(later)
            await stream.send_all(timeout)
        else:
            await stream.send_all(ok + timeout)
        await trio.sleep_forever()

    url = await raw_server(nursery, handler)
    async with CoreClient(url, container_id="c-1", timeout=5.0) as client, client.lane() as lane:
        assert await post(lane, [body(1)]) == [None]
        await trio.sleep(2)
        assert await post(lane, [body(2)]) == [None]
    assert connections == 2


async def test_a_408_is_retried_not_refused(nursery: trio.Nursery) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await requests_in(stream, 1)
        await stream.send_all(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\r\n")
        await trio.sleep(0.5)

    url = await raw_server(nursery, handler)
    async with CoreClient(url, container_id="c-1", timeout=5.0) as client, client.lane() as lane:
        (result,) = await post(lane, [body(1)])
    assert isinstance(result, CoreServerError) and result.status == 408


async def test_a_deadline_after_every_answer_but_before_the_write_ended_closes_it(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    # The server answers the whole batch early and stops reading; the lane's deadline
    # passes (a stalled loop) just as the last answer is parsed, with the write not done.
    connections = 0
    ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        await stream.receive_some(1)
        await stream.send_all(ok * 200)
        await trio.sleep_forever()

    url = await raw_server(nursery, handler)
    items = [(False, b'{"n":%d,"pad":"%s"}' % (n, b"p" * 32_000)) for n in range(200)]
    async with CoreClient(url, container_id="c-1", timeout=2.0) as client, client.lane() as lane:
        pipeline = lane._pipeline
        assert pipeline is not None

        def stall() -> None:
            lane.arm()
            if lane.guard is not None:
                lane.guard.deadline = trio.current_time()

        pipeline.progress = stall
        with trio.fail_after(60):
            results = await post(lane, items)
        assert results[:200] == [None] * 200
        assert pipeline._stream is None, "a half-written connection was kept"


async def test_a_deadline_as_the_last_piece_goes_out_never_keeps_the_connection(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The guard fires while the answers wait for the write to end, in the turn its last
    # piece goes out (a stalled loop): all written, nothing answered yet. Kept, the
    # connection would hand the late answers (400s here) to the next batch.
    monkeypatch.setattr("runtime._transport.WRITE_PIECE", 1 << 30)

    def request(n: int, size: int) -> bytes:
        data = b'{"n":%d,"p":"%s"}' % (n, b"x" * size)
        return b"POST /t HTTP/1.1\r\nhost: h\r\ncontent-length: %d\r\n\r\n%s" % (len(data), data)

    batch = [request(n, 50_000) for n in range(20)]

    connections = 0

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        if connections == 1:
            got = 0
            while got < sum(map(len, batch)):
                got += len(await stream.receive_some(1 << 20))
            await trio.sleep(0.2)  # slow to answer
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(b"HTTP/1.1 400 Bad\r\ncontent-length: 2\r\n\r\n{}" * 20)
        else:
            await stream.receive_some(1 << 20)
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
        await trio.sleep_forever()

    url = await raw_server(nursery, handler)
    pipeline = Pipeline("127.0.0.1", int(url.rsplit(":", 1)[1]))
    with trio.CancelScope() as guard:
        pipeline.progress = guard.cancel
        await pipeline.exchange(batch, 20)
    assert guard.cancelled_caught and pipeline.answers == []
    pipeline.progress = None
    try:
        (answer,) = await pipeline.exchange([request(99, 10)], 1)
    finally:
        await pipeline.close()
    assert answer[0] == 200 and connections == 2


async def test_a_refused_reconnect_after_a_dead_idle_connection_is_tried_once(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The dead socket is replaced before writing, so the refusal is not a stale socket's.
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    request = b"POST /t HTTP/1.1\r\nhost: h\r\ncontent-length: 2\r\n\r\n{}"

    gone = trio.Event()

    async def core_once() -> None:  # answers two requests on one connection, then goes away
        async with listener, await listener.accept() as stream:
            for _ in range(2):
                await stream.receive_some(65536)
                await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
        gone.set()

    nursery.start_soon(core_once)
    pipeline = Pipeline("127.0.0.1", listener.socket.getsockname()[1])
    for _ in range(2):  # the second on the kept-alive connection
        assert [a[0] for a in await pipeline.exchange([request], 1)] == [200]
    await gone.wait()
    attempts = 0
    connect = trio.open_tcp_stream

    async def counted(host: str, port: int) -> trio.SocketStream:
        nonlocal attempts
        attempts += 1
        return await connect(host, port)

    monkeypatch.setattr(trio, "open_tcp_stream", counted)
    with pytest.raises(PipelineBroken):
        await pipeline.exchange([request], 1)
    assert attempts == 1


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        # chunked, then an informational answer before a 2xx, then a 2xx sent byte by byte
        (
            [
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
                b"HTTP/1.1 100 Continue\r\n\r\n"
                b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{}",
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
            ],
            [None, None, None],
        ),
        # a 503 with a Retry-After, a redirect (not followed), then Connection: close
        (
            [
                b"HTTP/1.1 503 Busy\r\nRetry-After: 3\r\ncontent-length: 0\r\n\r\n",
                b"HTTP/1.1 302 Found\r\nlocation: /x\r\ncontent-length: 0\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}",
            ],
            ["CoreServerError", "CoreUnexpectedResponse", None],
        ),
    ],
)
async def test_unusual_answers_are_read_by_h11(
    nursery: trio.Nursery, answers: list[bytes], expected: list[str | None]
) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await requests_in(stream, len(answers))
        data = b"".join(answers)
        for n in range(len(data)):  # one byte per write: every split of the framing
            await stream.send_all(data[n : n + 1])
        await trio.sleep(0.5)

    url = await raw_server(nursery, handler)
    async with CoreClient(url, container_id="c-1", timeout=5.0) as client, client.lane() as lane:
        results = await post(lane, [body(n) for n in range(len(answers))])
    assert [type(r).__name__ if r else None for r in results] == expected
    if isinstance(results[0], CoreServerError):
        assert results[0].retry_after == 3.0


async def test_connection_close_after_an_answer_leaves_the_rest_unanswered(
    nursery: trio.Nursery,
) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await requests_in(stream, 3)
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"
        )
        await stream.aclose()

    url = await raw_server(nursery, handler)
    async with CoreClient(url, container_id="c-1", timeout=5.0) as client, client.lane() as lane:
        results = await post(lane, [body(n) for n in range(3)])
    assert results[0] is None
    assert len(results) == 2 and isinstance(results[1], CoreUnavailable)


def test_the_minimal_parse_takes_only_plain_small_2xx_answers() -> None:
    plain = b"HTTP/1.1 200 \r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
    assert _parse_simple(plain) == (200, len(plain) - 2, len(plain), False)
    assert _parse_simple(plain + b"HTTP/1.1 2") == (200, len(plain) - 2, len(plain), False)
    assert _parse_simple(plain[:-1]) is None  # the body is not all here yet
    assert _parse_simple(plain[:20]) is None
    closing = b"HTTP/1.1 201 Created\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    assert _parse_simple(closing) == (201, len(closing), len(closing), True)
    for odd in (
        b"HTTP/1.1 503 Busy\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",  # no length: read to the close
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\ncontent-length: -2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 99999999\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"x-pad: " + b"a" * 9000,  # a head too large
    ):
        assert _parse_simple(odd) is _UNUSUAL, odd


# -- through the outbox --------------------------------------------------------------------------


async def test_a_failure_inside_a_batch_never_lets_a_devices_later_item_through(
    core: FakeCore,
    client: CoreClient,
    tmp_path: Path,
    autojump_clock: trio.abc.Clock,
    batch_sizes: list[int],
) -> None:
    # d1's fourth reading is refused once with 503; the batches it is in carry other
    # devices' readings, which go through. d1's later readings must not overtake it.
    failed: set[int] = set()

    def answer(path: str, payload: dict[str, Any]) -> int | None:
        if payload["device_id"] == "d1" and payload["metrics"]["seq"] == 3 and not failed:
            failed.add(3)
            return 503
        return None

    core.answer = answer
    settings = OutboxSettings(senders=1)
    async with open_outbox(client, spool_path=tmp_path / "spool.db", settings=settings) as ob:
        ob.telemetry(record(0, 0))
        with trio.fail_after(10):
            await ob.wait_settled()  # the link is up: batches from now on
        for n in range(1, 30):
            for d in range(3):
                ob.telemetry(record(d, n))
        with trio.fail_after(60):
            await ob.wait_settled()
        stats = ob.stats()
    seen: dict[str, list[int]] = defaultdict(list)
    for payload in core.telemetry():
        seen[payload["device_id"]].append(payload["metrics"]["seq"])
    assert seen == {"d0": list(range(30)), "d1": list(range(1, 30)), "d2": list(range(1, 30))}
    assert failed == {3}
    assert stats.retried == 1
    assert max(batch_sizes) == 3, "the lane pipelined, one item per device in a batch"
    assert core.connections == 1


async def test_dropped_connections_and_503s_lose_nothing_and_keep_order(
    core: FakeCore, client: CoreClient, tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    async with open_outbox(client, spool_path=tmp_path / "spool.db") as ob:
        for n in range(60):
            for d in range(20):
                ob.telemetry(record(d, n))
            if n == 10:
                core.set_trouble(Trouble("drop", until=trio.current_time() + 3))
            if n == 30:
                core.set_trouble(Trouble("503", retry_after=1, until=trio.current_time() + 3))
            await trio.sleep(0.25)
        with trio.fail_after(120):
            await ob.wait_settled()
        stats = ob.stats()
    seen: dict[str, list[int]] = defaultdict(list)
    for payload in core.telemetry():
        seq = payload["metrics"]["seq"]
        if seq not in seen[payload["device_id"]]:
            seen[payload["device_id"]].append(seq)
    assert seen == {f"d{d}": list(range(60)) for d in range(20)}
    assert (stats.delivered, stats.dropped) == (1200, 0)
    assert stats.retried > 0


class WordyCore(FakeCore):
    """Answers every request with ~320 bytes: a Core whose answers say something."""

    async def _take(self, *args: Any, **kwargs: Any) -> Any:
        status, headers, _ = await super()._take(*args, **kwargs)
        return status, headers, json.dumps({"ok": "x" * 300}).encode()


async def test_a_full_batch_of_wordy_answers_never_deadlocks_the_lane(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    # This server, like most, stops reading while an answer waits to be sent. Written
    # whole before its answers were read, a batch at the default depth (1,024) deadlocked
    # on it: every one timed out.
    core = WordyCore(token=TOKEN)
    async with trio.open_nursery() as nursery:
        await nursery.start(core.serve)
        async with CoreClient(core.url, container_id="c-1", token=TOKEN, timeout=2.0) as client:
            settings = OutboxSettings(senders=1)
            async with open_outbox(
                client, spool_path=tmp_path / "spool.db", settings=settings
            ) as ob:
                ob.telemetry(record(0, 0))
                with trio.fail_after(30):
                    await ob.wait_settled()
                for device in range(3000):
                    ob.telemetry(record(device, 1))
                with trio.fail_after(30):
                    await ob.wait_settled()
                stats = ob.stats()
        nursery.cancel_scope.cancel()
    assert stats.delivered == 3001
    assert stats.retried == 0, "a batch timed out"
