"""Slow, idle, broken and numerous clients against ``piphi-runtime serve`` as a real process
on 127.0.0.1 (issue 14, items 4, 5 and 10): no handler is cut by a connection timeout,
idle and closing connections end promptly, hypercorn's own refusals are problem+json, and
a flood past the file limit is shed while ``/health`` answers and the process lives.
Real time, each test bounded to seconds."""

from __future__ import annotations

import json
import os
import resource
import socket
from collections import Counter
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from runtime._web.server import ConnectionLimits
from tests.reliability._procs import HEALTH_BOUND, runtime_process, stop

pytestmark = pytest.mark.slow  # a real process: make test runs it, -m "not slow" skips it

KEY = "X-PiPhi-Idempotency-Key"
TOKEN = "hostile-test-token"
FLOOD = 1100
"""Connections in a flood: more than a common container's file limit."""
NOFILE = 1024
"""The runtime process's file limit in the flood tests (a common container default)."""


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


# -- item 10: connections end promptly; hypercorn's own refusals -----------------------------


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


async def test_hypercorns_own_refusals_are_problem_json(tmp_path: Path) -> None:
    """hypercorn answers requests h11 cannot take (400) and heads over its 16 KiB (431)
    before the app sees them; they carry the same problem+json as every other refusal. (A
    head bigger than 16 KiB in one read of 64 KiB passes; this one needs two.)"""
    async with runtime_process(plain_env(tmp_path), target="tests.served:INTEGRATION") as (_, url):
        port = port_of(url)
        malformed, _ = await exchange(port, b"GET /contract HTTP/1.1\r\nHost x\r\n\r\n", read_for=5)
        big = b"GET /contract HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
        oversized, _ = await exchange(port, big, read_for=5)
        # Still sending when the answer comes: the server reads the rest before it closes
        # (a close with unread data resets the connection, and the answer was lost).
        pushy, _ = await exchange(port, big + b"b" * 500_000, read_for=5)
    for raw, status, code in (
        (malformed, 400, "malformed_request"),
        (oversized, 431, None),
        (pushy, 431, None),
    ):
        got, headers, body = parse(raw)
        assert got == status, raw[:200]
        assert headers["content-type"] == "application/problem+json"
        assert int(headers["content-length"]) == len(body)
        assert headers["connection"] == "close"
        problem = json.loads(body)
        assert problem["status"] == status and problem["detail"] and problem["code"]
        assert problem["type"].endswith(problem["code"])
        if code:
            assert problem["code"] == code
    assert "16384 bytes" in json.loads(parse(oversized)[2])["detail"]


# -- item 5: a flood past the file limit ------------------------------------------------------


async def open_flood(port: int, kind: str) -> list[socket.socket]:
    """FLOOD connections without a token: ``slow_body`` sends a command's head and three
    bytes of its 100 kB body; ``idle`` sends nothing. Returns the (non-blocking) sockets."""
    head = (
        b"POST /command HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100000\r\n\r\n{"a'
    )
    opened: list[socket.socket] = []
    limiter = trio.CapacityLimiter(200)

    async def one() -> None:
        async with limiter:
            plain = socket.socket()
            plain.setblocking(False)
            wrapped = trio.socket.from_stdlib_socket(plain)
            await wrapped.connect(("127.0.0.1", port))
            if kind == "slow_body":
                await wrapped.send(head)
            opened.append(plain)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for _ in range(FLOOD):
                nursery.start_soon(one)
    return opened


def poll_answers(sockets: list[socket.socket], seen: dict[int, bytes | str]) -> Counter[str]:
    """Read what the sockets not yet settled have received, without waiting: each settles
    with its answer, ``closed`` (closed without one) or ``reset``. Counts by status code,
    ``closed``, ``reset`` and ``none`` (still open, nothing received)."""
    for index, sock in enumerate(sockets):
        if index in seen:
            continue
        try:
            data = sock.recv(4096, socket.MSG_DONTWAIT)
        except BlockingIOError:
            continue
        except ConnectionResetError:
            seen[index] = "reset"
            continue
        seen[index] = data or "closed"
    counts = Counter(str(parse(v)[0]) if isinstance(v, bytes) else v for v in seen.values())
    counts["none"] = len(sockets) - len(seen)
    return counts


async def health_latency(port: int, bound: float = HEALTH_BOUND) -> float | None:
    """One ``GET /health`` on a new connection: seconds to a 200, None if none in time."""
    started = trio.current_time()
    with trio.move_on_after(bound):
        answer, _ = await exchange(
            port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", read_for=bound
        )
        if answer and parse(answer)[0] == 200:
            return trio.current_time() - started
    return None


async def health_within(port: int, bound: float) -> float | None:
    """Seconds until a ``GET /health`` is answered 200, asking again after a refusal."""
    started = trio.current_time()
    with trio.move_on_after(bound):
        while await health_latency(port, bound) is None:  # noqa: ASYNC110 - a real server
            await trio.sleep(0.1)
        return trio.current_time() - started
    return None


@pytest.mark.parametrize(
    ("mode", "kind"), [("adopted", "slow_body"), ("managed", "slow_body"), ("adopted", "idle")]
)
async def test_a_flood_past_the_file_limit_is_shed_and_health_answers(
    tmp_path: Path, mode: str, kind: str
) -> None:
    """1,100 connections without a token against a runtime limited to 1,024 files: the
    excess is answered 503 problem+json, /health answers within a second, and when they
    all leave the process lives (hypercorn raised BusyResourceError out of the server and
    the runtime exited)."""
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < FLOOD + 300:
        pytest.skip(f"this test process needs {FLOOD + 300} files")
    extra = {"PIPHI_INTEGRATION_INTERNAL_TOKEN": TOKEN} if mode == "managed" else {}
    log = tmp_path / "runtime.log"
    limits = ConnectionLimits.for_file_limit(NOFILE)
    async with runtime_process(
        plain_env(tmp_path, **extra), log=log, target="tests.served:INTEGRATION", nofile=NOFILE
    ) as (proc, url):
        port = port_of(url)
        files_before = len(os.listdir(f"/proc/{proc.pid}/fd"))
        flood = await open_flood(port, kind)
        seen: dict[int, bytes | str] = {}
        try:
            # Right behind the burst the process is busy with it (about 1.5 ms of CPU per
            # connection); /health is answered once it is through, never dropped for good.
            behind = await health_within(port, 15)
            held = 0 if mode == "managed" else limits.max_connections
            with trio.fail_after(20):
                while poll_answers(flood, seen)["none"] > held:  # noqa: ASYNC110 - sockets
                    await trio.sleep(0.1)
            sorted_after = trio.current_time()
            latencies = []
            for _ in range(10):  # while the cap is held (an idle connection's for 5 s)
                latencies.append(await health_latency(port))
                await trio.sleep(0.1)
            files = len(os.listdir(f"/proc/{proc.pid}/fd"))
            counts = poll_answers(flood, seen)
            assert trio.current_time() - sorted_after < 4, "measured after the cap was left"
        finally:
            for sock in flood:
                sock.close()
        print(
            f"[hostile] {mode} {kind}: /health behind the burst {behind}, then {latencies}; "
            f"files {files_before} -> {files}; {dict(counts)}"
        )
        assert behind is not None, "/health never answered behind the burst"
        assert None not in latencies, latencies
        assert files <= files_before + limits.max_connections + limits.overflow + 1
        if mode == "managed":  # refused before Quart; past the cap while they arrived, shed
            assert set(counts) - {"none"} <= {"401", "503"} and counts["none"] == 0, counts
        else:  # the cap is held; every other connection was shed
            assert counts["none"] == limits.max_connections, counts
            assert counts["503"] == FLOOD - limits.max_connections, counts
        shed = [v for v in seen.values() if isinstance(v, bytes) and parse(v)[0] == 503]
        for answer in shed[:5]:
            _, headers, body = parse(answer)
            assert headers["content-type"] == "application/problem+json"
            assert headers["retry-after"] == "1"
            assert json.loads(body)["code"] == "over_capacity"
        with trio.fail_after(3):  # they have all left: their descriptors are freed
            while len(os.listdir(f"/proc/{proc.pid}/fd")) > files_before + 2:  # noqa: ASYNC110
                await trio.sleep(0.1)
        assert proc.returncode is None, "the runtime died when the flood left"
        assert await health_latency(port) is not None
        code, _ = await stop(proc)
        assert code == 0
    text = log.read_text()
    for sign in ("CRITICAL", "BusyResourceError", "Traceback"):
        assert sign not in text, text[-3000:]
