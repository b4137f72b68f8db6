"""bench/core_sink.py's hand-written HTTP/1.1 framing: pipelined requests, however the
reads split them, are all answered in order, with the bytes FakeCore's h11 loop sends.

In-memory streams, one chunk per read (the client waits until the sink is blocked before
the next chunk), so the splits are exactly the ones written here; nothing is timed."""

from __future__ import annotations

import json
import re

import pytest
import trio
import trio.testing

from bench.core_sink import PARSERS, CountingCore, Stats

TELEMETRY = "/api/v2/integrations/telemetry"
CONFIG = "/api/v2/integrations/config/fetch/all/by/container/internal"


def request(method: str, target: str, body: bytes = b"", *, close: bool = False) -> bytes:
    head = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1:1", "X-Container-Id: c"]
    if body or method == "POST":
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    if close:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def reading(seq: int) -> bytes:
    payload = {
        "telemetry_id": f"id{seq}",
        "device_id": "dev1",
        "metrics": {"seq": seq},
        "timestamp": "2026-12-07T12:00:00+00:00",
    }
    return json.dumps(payload).encode()


# Answered 200 {}, 200 {} (a redelivery), 404, 400, 200 [], 200 {} and then closed; the
# request after the Connection: close one is never answered.
PIPELINE = b"".join(
    [
        request("POST", TELEMETRY, reading(1)),
        request("POST", TELEMETRY, reading(1)),
        request("POST", "/nowhere", b"{}"),
        request("POST", TELEMETRY, b"not json"),
        request("GET", CONFIG + "?container_id=c"),
        request("POST", TELEMETRY, reading(2), close=True),
        request("POST", TELEMETRY, reading(3)),
    ]
)
STATUSES = [200, 200, 404, 400, 200, 200]


async def exchange(parser: str, chunks: list[bytes]) -> tuple[bytes, Stats]:
    """Write ``chunks`` one read each to a sink's connection; all it answered, to EOF."""
    stats = Stats()
    core = CountingCore(stats, 0, parser)
    client, server = trio.testing.memory_stream_pair()
    answered = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(core._handle, server)
        for chunk in chunks:
            try:
                await client.send_all(chunk)
            except trio.BrokenResourceError:
                break  # the sink closed the connection (after Connection: close)
            await trio.testing.wait_all_tasks_blocked()
        while data := await client.receive_some(65536):
            answered += data
    return bytes(answered), stats


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def statuses(answered: bytes) -> list[int]:
    return [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", answered)]


@pytest.mark.parametrize("size", [1, 7, 61, 400, len(PIPELINE)])
async def test_pipelined_requests_split_across_reads_are_answered_in_order(size: int) -> None:
    fast, stats = await exchange("fast", split(PIPELINE, size))
    assert statuses(fast) == STATUSES
    assert fast.endswith(b"Connection: close\r\n\r\n{}")
    assert (stats.telemetry, stats.unique, stats.duplicates) == (3, 2, 1)
    # Byte for byte what the h11 path sends (answered one request at a time).
    h11_answered, h11_stats = await exchange("h11", split(PIPELINE, size))
    assert fast == h11_answered
    assert (h11_stats.unique, h11_stats.duplicates) == (2, 1)


async def test_uncommon_requests_go_to_h11_mid_connection() -> None:
    body = reading(5)
    chunked = (
        f"POST {TELEMETRY} HTTP/1.1\r\nHost: x\r\nX-Container-Id: c\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode() + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    data = request("POST", TELEMETRY, reading(4)) + chunked + request("GET", CONFIG, close=True)
    for parser in PARSERS:
        answered, stats = await exchange(parser, split(data, 13))
        assert statuses(answered) == [200, 200, 200], parser
        assert stats.unique == 2


async def test_not_http_is_answered_400_and_closed() -> None:
    answered, _ = await exchange("fast", [request("POST", TELEMETRY, reading(1)), b"HELLO\r\n\r\n"])
    assert statuses(answered) == [200, 400]
