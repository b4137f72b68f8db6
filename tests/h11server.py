"""A tiny HTTP/1.1 server on 127.0.0.1 for tests, on trio + h11, with keep-alive.

Subclasses decide every answer in ``respond()``; the base owns the listener (which
``down()`` closes, keeping the port for ``up()``, so clients see connections refused),
the open connections and the h11 loop. Plain h11 rather than a framework, so that each
misbehaviour (no answer, a dropped connection, a wrong status) is exactly the test's.
"""

from __future__ import annotations

from typing import Any

import h11
import trio

Answer = tuple[int, list[tuple[str, str]], bytes]


class H11Server:
    """Run with ``await nursery.start(server.serve)``; ``server.port`` is then bound."""

    def __init__(self) -> None:
        self.port = 0
        self.connections = 0
        """Connections accepted so far."""
        self.most_at_once = 0
        self._listeners: list[trio.SocketListener] = []
        self._nursery: trio.Nursery | None = None
        self._accepting = trio.CancelScope()
        self._conns: set[trio.SocketStream] = set()

    async def respond(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> Answer | None:
        """The answer to one request, or None to close the connection without one."""
        raise NotImplementedError

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._listen()
            task_status.started()
            await trio.sleep_forever()

    async def down(self) -> None:
        """Refuse connections from now on, like a server that has stopped."""
        self._accepting.cancel()
        for listener in self._listeners:
            await listener.aclose()
        self._listeners = []
        await self.drop_connections()

    async def up(self) -> None:
        await self._listen()

    async def drop_connections(self) -> None:
        """Close every open connection (as an idle timeout would), keep listening."""
        for conn in list(self._conns):
            await conn.aclose()

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

    async def _handle(self, stream: trio.SocketStream) -> None:
        self._conns.add(stream)
        self.connections += 1
        self.most_at_once = max(self.most_at_once, len(self._conns))
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await _next(conn, stream, h11.Request)
                if request is None:
                    return
                body = b""
                while True:
                    event = await _next(conn, stream, (h11.Data, h11.EndOfMessage))
                    if event is None:
                        return
                    if isinstance(event, h11.EndOfMessage):
                        break
                    body += event.data
                headers = {k.decode().lower(): v.decode() for k, v in request.headers}
                answer = await self.respond(
                    request.method.decode(), request.target.decode(), headers, body
                )
                if answer is None:
                    return
                status, extra, data = answer
                response_headers = [("content-length", str(len(data))), *extra]
                await stream.send_all(
                    conn.send(h11.Response(status_code=status, headers=response_headers))
                )
                await stream.send_all(conn.send(h11.Data(data=data)))
                await stream.send_all(conn.send(h11.EndOfMessage()))
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            return
        finally:
            self._conns.discard(stream)
            await stream.aclose()


async def _next(conn: h11.Connection, stream: trio.SocketStream, kinds: Any) -> Any:
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
