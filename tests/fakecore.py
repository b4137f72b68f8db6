"""A real HTTP server on 127.0.0.1 standing in for PiPhi Core in delivery tests.

Plain trio + h11, so its behaviour is entirely the test's: it can refuse connections
(its listener closed, the port kept), answer a given status with headers, or answer
slowly. It records every payload it accepted, with the auth headers it came with.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
import h11
import trio


@attrs.define
class Received:
    path: str
    body: dict[str, Any]
    container_id: str | None
    token: str | None


class FakeCore:
    """Run with ``await nursery.start(core.serve)``; then ``core.url`` is its base URL."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.requests = 0
        self.status = 200
        self.headers: list[tuple[str, str]] = []
        self.delay = 0.0
        self.token: str | None = None
        """When set, requests without this token get 401."""
        self.configs: list[dict[str, Any]] = []
        self.answer: Callable[[str, dict[str, Any]], int | None] | None = None
        """Per request: ``answer(path, body)`` may return a status to answer instead."""
        self.attempts: list[tuple[str, dict[str, Any]]] = []
        self.port = 0
        self._listeners: list[trio.SocketListener] = []
        self._nursery: trio.Nursery | None = None
        self._accepting = trio.CancelScope()
        self._conns: set[trio.SocketStream] = set()
        self.connections = 0
        """Connections accepted so far."""
        self.most_at_once = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._listen()
            task_status.started()
            await trio.sleep_forever()

    async def _listen(self) -> None:
        assert self._nursery is not None
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        self._listeners = listeners
        self._accepting = scope = trio.CancelScope()
        nursery = self._nursery

        async def accept() -> None:
            with scope:
                await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

        nursery.start_soon(accept)

    async def down(self) -> None:
        """Refuse connections from now on, like a Core that has stopped."""
        self._accepting.cancel()
        for listener in self._listeners:
            await listener.aclose()
        self._listeners = []
        await self.drop_connections()

    async def up(self) -> None:
        await self._listen()

    def telemetry(self) -> list[dict[str, Any]]:
        return [r.body for r in self.received if r.path.endswith("/telemetry")]

    def events(self) -> list[dict[str, Any]]:
        return [r.body for r in self.received if r.path.endswith("/ingest")]

    async def drop_connections(self) -> None:
        """Close every open connection (as a server's idle timeout would), keep listening."""
        for conn in list(self._conns):
            await conn.aclose()

    async def _handle(self, stream: trio.SocketStream) -> None:
        self._conns.add(stream)
        self.connections += 1
        self.most_at_once = max(self.most_at_once, len(self._conns))
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await self._next(conn, stream, h11.Request)
                if request is None:
                    return
                body = b""
                while True:
                    event = await self._next(conn, stream, (h11.Data, h11.EndOfMessage))
                    if event is None:
                        return
                    if isinstance(event, h11.EndOfMessage):
                        break
                    body += event.data
                await self._answer(conn, stream, request, body)
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            return
        finally:
            self._conns.discard(stream)
            await stream.aclose()

    async def _next(self, conn: h11.Connection, stream: trio.SocketStream, kinds: Any) -> Any:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)
                if not data and conn.their_state is h11.CLOSED:
                    return None
                continue
            if isinstance(event, h11.ConnectionClosed):
                return None
            assert isinstance(event, kinds), event
            return event

    async def _answer(
        self, conn: h11.Connection, stream: trio.SocketStream, request: h11.Request, body: bytes
    ) -> None:
        self.requests += 1
        if body:
            self.attempts.append((request.target.decode(), json.loads(body)))
        if self.delay:
            await trio.sleep(self.delay)
        headers = {k.decode().lower(): v.decode() for k, v in request.headers}
        path = request.target.decode()
        status, extra = self.status, list(self.headers)
        if self.answer is not None and body:
            chosen = self.answer(path.split("?")[0], json.loads(body))
            if chosen is not None:
                status = chosen
        if self.token is not None and headers.get("x-piphi-integration-token") != self.token:
            status, extra = 401, []
        payload: Any = {}
        if 200 <= status < 300:
            if request.method == b"GET" and "/config/fetch/" in path:
                payload = self.configs
            else:
                self.received.append(
                    Received(
                        path=path.split("?")[0],
                        body=json.loads(body),
                        container_id=headers.get("x-container-id"),
                        token=headers.get("x-piphi-integration-token"),
                    )
                )
        data = json.dumps(payload).encode()
        response_headers = [
            ("content-type", "application/json"),
            ("content-length", str(len(data))),
            *extra,
        ]
        await stream.send_all(conn.send(h11.Response(status_code=status, headers=response_headers)))
        await stream.send_all(conn.send(h11.Data(data=data)))
        await stream.send_all(conn.send(h11.EndOfMessage()))
