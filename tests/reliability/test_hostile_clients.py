"""Slow and idle clients against ``piphi-runtime serve`` as a real process on 127.0.0.1
(issue 14, items 4 and 10): no handler is cut by a connection timeout, and idle and
closing connections end promptly. Real time, each test bounded to seconds."""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.reliability._procs import runtime_process

KEY = "X-PiPhi-Idempotency-Key"


def plain_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A runtime whose Core never answers (nothing listens on port 9)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPHI_")}
    env.update(
        PIPHI_CORE_BASE_URL="http://127.0.0.1:9",
        PIPHI_STATE_DIR=str(tmp_path / "state"),
        PIPHI_CONFIG_SNAPSHOT_PATH=str(tmp_path / "no-mount.json"),
        PIPHI_CONTAINER_ID="ctr-hostile",
        PIPHI_LOG_LEVEL="WARNING",
        **extra,
    )
    return env


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def exchange(
    port: int,
    data: bytes,
    *,
    read_for: float,
    trickle: bytes = b"",
    every: float = 0.5,
) -> tuple[bytes, float | None]:
    """Send ``data`` (then ``trickle`` a byte every ``every`` s) and read until the server
    closes the connection: what arrived, and when it closed (None: still open after
    ``read_for`` seconds)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    started = trio.current_time()
    received = bytearray()

    async def dribble() -> None:
        for byte in trickle:
            await trio.sleep(every)
            await stream.send_all(bytes([byte]))

    try:
        await stream.send_all(data)
        with trio.move_on_after(read_for):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(dribble)
                while chunk := await stream.receive_some(65536):
                    received += chunk
                nursery.cancel_scope.cancel()
            return bytes(received), trio.current_time() - started
    except (trio.BrokenResourceError, ExceptionGroup):  # reset, or a write after the close
        return bytes(received), trio.current_time() - started
    finally:
        await stream.aclose()
    return bytes(received), None


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


# -- item 4: handlers run to their own timeouts ---------------------------------------------


async def test_slow_routes_answer_within_their_own_timeouts(tmp_path: Path) -> None:
    """A 7 s command, refresh and discovery each answer (the server's read timeout cut them
    all at 5 s); a client that leaves mid-command does not lose its outcome."""
    env = plain_env(tmp_path)
    async with (
        runtime_process(env, log=tmp_path / "runtime.log", target="tests.served:SLOW") as (_, url),
        httpx.AsyncClient(base_url=url, timeout=40) as http,
    ):
        for config in (
            {"id": "fast", "then": "ok", "poll_interval_seconds": 3600},
            {"id": "slow", "then": "slow:7", "poll_interval_seconds": 3600},
        ):
            assert (await http.post("/config", json=config)).status_code == 200
        command = {"command": "echo", "config_id": "fast", "args": {"sleep": 7}}
        calls: dict[str, Callable[[], Awaitable[httpx.Response]]] = {
            # /state?refresh=true reads both: "fast" behind the command, "slow" for 7 s.
            "command": partial(http.post, "/command", json=command, headers={KEY: "k-slow"}),
            "refresh": partial(
                http.get, "/state", params={"refresh": "true", "refresh_request_id": "r-slow"}
            ),
            "discover": partial(http.post, "/discover", json={"inputs": {"sleep": 7}}),
        }
        answers: dict[str, tuple[int, float, Any]] = {}

        async def timed(name: str) -> None:
            started = trio.current_time()
            response = await calls[name]()
            answers[name] = (response.status_code, trio.current_time() - started, response.json())

        async with trio.open_nursery() as nursery:
            for name in calls:
                nursery.start_soon(timed, name)
        for name, (status, took, body) in answers.items():
            assert status == 200, (name, body)
            assert 6.5 < took < 25, (name, took)  # really slow, and within the route's bound
        assert answers["command"][2]["result"] == {"sleep": 7}
        receipt = answers["refresh"][2]["refresh"]
        assert {d["status"] for d in receipt["devices"]} == {"refreshed"}, receipt
        assert answers["discover"][2]["devices"] == [{"id": "found-slowly"}]
        replay = await http.post("/command", json=command, headers={KEY: "k-slow"})
        assert replay.status_code == 200 and replay.json()["replayed"] is True

        # The client leaves one second into a 3 s command: the outcome is still kept.
        gone = {"command": "echo", "config_id": "fast", "args": {"sleep": 3}}
        body = json.dumps(gone).encode()
        stream = await trio.open_tcp_stream("127.0.0.1", port_of(url))
        await stream.send_all(
            b"POST /command HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"%s: k-gone\r\nContent-Length: %d\r\n\r\n%s" % (KEY.encode(), len(body), body)
        )
        await trio.sleep(1)
        await stream.aclose()
        with trio.fail_after(10):
            while True:  # 409 while it runs; an outcome once it has finished
                retry = await http.post("/command", json=gone, headers={KEY: "k-gone"})
                if retry.status_code != 409:
                    break
                await trio.sleep(0.5)
        assert retry.status_code == 200, retry.text
        assert retry.json()["replayed"] is True and retry.json()["result"] == {"sleep": 3}


# -- item 10: connections end promptly --------------------------------------------------------


async def test_idle_and_closing_connections_end_promptly(tmp_path: Path) -> None:
    """``Connection: close`` on a Quart route was held 5 s; an idle keep-alive connection,
    a silent one and a head sent a byte at a time end by the 5 s keep-alive timer."""
    cases = {
        "close": (b"GET /contract HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b""),
        "keep-alive": (b"GET /contract HTTP/1.1\r\nHost: x\r\n\r\n", b""),
        "silent": (b"", b""),
        "slow head": (b"GET /contract HTTP/1.1\r\n", b"X-Slow: " + b"a" * 30),
    }
    ended: dict[str, tuple[bytes, float | None]] = {}
    async with runtime_process(plain_env(tmp_path), target="tests.served:INTEGRATION") as (_, url):

        async def one(name: str) -> None:
            data, trickle = cases[name]
            ended[name] = await exchange(port_of(url), data, read_for=9, trickle=trickle)

        async with trio.open_nursery() as nursery:
            for name in cases:
                nursery.start_soon(one, name)
    (answer, closed) = ended["close"]
    assert parse(answer)[0] == 200
    assert closed is not None and closed < 1, closed
    assert parse(ended["keep-alive"][0])[0] == 200
    for name in ("keep-alive", "silent", "slow head"):
        closed = ended[name][1]
        assert closed is not None and 4.5 < closed < 7, (name, closed)
