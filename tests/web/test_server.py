"""The server behind ``piphi-runtime serve`` (``runtime._web.server``), in process on
127.0.0.1 with small limits: the cap and its overflow lane, the send timeout, restarts on
the same port; and the app's own layer that lets hypercorn close connections, also under
plain ``hypercorn.trio.serve`` (the CLI's code path). Real time, bounded."""

from __future__ import annotations

import json
import logging
import socket
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from hypercorn.trio import serve as hypercorn_serve

from runtime._serve import hypercorn_config
from runtime._web import RUNTIME_KEY, server
from runtime._web.server import ConnectionLimits, serve_supervised
from runtime.lowlevel import open_runtime
from runtime.testing import FakeCore
from tests.reliability.test_hostile_clients import exchange, parse, port_of
from tests.served import INTEGRATION, env_for

BIG = 32 * 1024 * 1024
"""A response larger than every socket buffer between the server and a client."""


async def plain_app(scope: Any, receive: Any, send: Any) -> None:
    """Answers every path with its name (``/big``: BIG bytes); handles the lifespan."""
    if scope["type"] == "lifespan":
        while True:
            stage = (await receive())["type"].rsplit(".", 1)[1]
            await send({"type": f"lifespan.{stage}.complete"})
            if stage == "shutdown":
                return
    body = b"x" * BIG if scope["path"] == "/big" else json.dumps(scope["path"]).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def start(nursery: trio.Nursery, limits: ConnectionLimits) -> int:
    """``serve_supervised`` of ``plain_app`` in ``nursery``; its port."""
    config = hypercorn_config("127.0.0.1:0", graceful_timeout=0.5, quiet=True)
    urls = await nursery.start(
        partial(
            serve_supervised, plain_app, config, limits=limits, shutdown_trigger=trio.sleep_forever
        )
    )
    return port_of(urls[0])


async def connect(port: int, *, receive_buffer: int | None = None) -> trio.socket.SocketType:
    plain = socket.socket()
    if receive_buffer is not None:
        plain.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock = trio.socket.from_stdlib_socket(plain)
    await sock.connect(("127.0.0.1", port))
    return sock


def test_the_cap_is_half_the_file_limit() -> None:
    assert ConnectionLimits.for_file_limit(1024) == ConnectionLimits(448, overflow=64)
    assert ConnectionLimits.for_file_limit(20_000).max_connections == 1000
    small = ConnectionLimits.for_file_limit(64)
    assert (small.max_connections, small.overflow) == (28, 4)


async def test_a_client_that_stops_reading_is_disconnected(nursery: trio.Nursery) -> None:
    """hypercorn waits for ever on a client that takes none of its response (its send is
    shielded, and no read timeout is set any more); here it is cut after send_timeout."""
    port = await start(nursery, ConnectionLimits(10, send_timeout=0.3))
    sock = await connect(port, receive_buffer=4096)
    await sock.send(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    await trio.sleep(1.5)  # reads nothing meanwhile
    received = 0
    with trio.fail_after(10):
        while True:
            try:
                chunk = await sock.recv(1 << 20)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += len(chunk)
    sock.close()
    assert 0 < received < BIG, received


async def test_past_the_cap_health_answers_and_the_rest_is_shed(nursery: trio.Nursery) -> None:
    port = await start(nursery, ConnectionLimits(1, overflow=1, head_timeout=0.5))
    holder = await connect(port)  # silent: holds the only place for 5 s (keep-alive)
    await trio.sleep(0.2)
    health, closed = await exchange(port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", read_for=3)
    status, headers, body = parse(health)
    assert (status, json.loads(body), headers["connection"]) == (200, "/health", "close")
    assert closed is not None and closed < 1
    shed, _ = await exchange(port, b"GET /state HTTP/1.1\r\nHost: x\r\n\r\n", read_for=3)
    status, headers, body = parse(shed)
    assert (status, headers["content-type"], headers["retry-after"]) == (
        503,
        "application/problem+json",
        "1",
    )
    assert json.loads(body)["code"] == "over_capacity"
    # A silent client fills the lane; then even /health is refused, unread, at once.
    lane = await connect(port)
    await trio.sleep(0.1)
    refused, closed = await exchange(port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", read_for=3)
    assert parse(refused)[0] == 503 and closed is not None and closed < 0.3
    with trio.fail_after(2):  # the lane gives up on its silent client after head_timeout
        assert parse(await lane.recv(4096))[0] == 503
    holder.close()
    lane.close()
    await trio.sleep(0.2)
    served, _ = await exchange(
        port, b"GET /state HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", read_for=3
    )
    status, headers, _ = parse(served)
    assert status == 200 and headers["server"] == "hypercorn-h11", "served by hypercorn again"


async def test_the_server_restarts_on_the_same_port_after_an_error(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    original = server._accept_loop
    calls = 0

    async def breaks_once(*args: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await trio.sleep(0.2)
            raise RuntimeError("the listener broke")
        await original(*args)

    monkeypatch.setattr(server, "_accept_loop", breaks_once)
    with caplog.at_level(logging.ERROR, logger="runtime.http"):
        port = await start(nursery, ConnectionLimits(10))
        answer, _ = await exchange(
            port, b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", read_for=5
        )
    assert parse(answer)[0] == 200 and json.loads(parse(answer)[2]) == "/after"
    assert calls == 2
    assert "restarting it on the same sockets" in caplog.text
    assert "the listener broke" in caplog.text


async def test_under_plain_hypercorn_connections_close_too(
    core: FakeCore, tmp_path: Path, nursery: trio.Nursery
) -> None:
    """The app's own layer (``_disconnect_after_send``) is what lets hypercorn close a
    ``Connection: close`` request and time out idle keep-alive connections, so it works
    under ``hypercorn --worker-class trio`` as well."""
    app = INTEGRATION.app()
    config = hypercorn_config("127.0.0.1:0", graceful_timeout=0.5, quiet=True)
    config.keep_alive_timeout = 1
    async with open_runtime(INTEGRATION, env=env_for(tmp_path, core)) as rt:
        app.extensions[RUNTIME_KEY] = rt
        stop = trio.Event()
        serving = partial(hypercorn_serve, app, config, shutdown_trigger=stop.wait)
        urls = await nursery.start(serving)
        port = port_of(urls[0])
        closing, closed = await exchange(
            port, b"GET /contract HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", read_for=5
        )
        assert parse(closing)[0] == 200 and closed is not None and closed < 0.5, closed
        idle, closed = await exchange(
            port, b"GET /contract HTTP/1.1\r\nHost: x\r\n\r\n", read_for=5
        )
        assert parse(idle)[0] == 200 and closed is not None and 0.9 < closed < 2, closed
        stop.set()


async def test_a_body_that_does_not_come_is_a_408(
    core: FakeCore, tmp_path: Path, nursery: trio.Nursery
) -> None:
    """With no read timeout, a slow body is bounded by the app's BODY_TIMEOUT (20 s; 1 s
    here): 408 problem+json, and the connection is closed."""
    app = INTEGRATION.app()
    app.config["BODY_TIMEOUT"] = 1
    config = hypercorn_config("127.0.0.1:0", graceful_timeout=0.5, quiet=True)
    async with open_runtime(INTEGRATION, env=env_for(tmp_path, core)) as rt:
        app.extensions[RUNTIME_KEY] = rt
        serving = partial(
            serve_supervised,
            app,
            config,
            limits=ConnectionLimits(10),
            shutdown_trigger=trio.sleep_forever,
        )
        port = port_of((await nursery.start(serving))[0])
        head = b"POST /config HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"
        answer, closed = await exchange(port, head, read_for=5, trickle=b'"id"', every=0.3)
        status, headers, body = parse(answer)
        assert (status, headers["content-type"]) == (408, "application/problem+json")
        assert json.loads(body)["code"] == "request_timeout"
        assert closed is not None and 1 <= closed < 2.5, closed
        nursery.cancel_scope.cancel()
