"""A lean HTTP/1.1 transport for the Core client: h11 over trio streams, few connections.

httpx's default transport (httpcore) costs about 0.9 ms of CPU per small POST here, and
its pool rescans every queued request on each event (docs/design.md, httpx); the same
requests written with h11 straight onto a trio stream cost about 0.2 ms. Telemetry is one
POST per reading by contract, so that difference is the runtime's delivery capacity.
This transport keeps httpx's client API (and its errors: ``httpx.ConnectError``,
``httpx.ReadTimeout``...), so ``CoreClient`` and its tests are unchanged, and it can be
swapped for any other ``httpx.AsyncBaseTransport``.

Scope, deliberately small: plain ``http://`` (Core is local; ``https://`` URLs use
httpx's default transport), bodies in memory, keep-alive with at most ``connections``
sockets, each request written with one ``send_all``. A request that fails on a reused
connection before any byte of the answer arrived is retried once on a fresh one: the
server may have closed the idle socket, and Core recognises redelivered payloads by id.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping

import h11
import httpx
import trio

__all__ = ["H11Transport"]

#: Larger answers are refused: Core's replies to the runtime are small JSON documents.
MAX_RESPONSE = 16 * 1024 * 1024


class _Connection:
    __slots__ = ("h11", "stream")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=64 * 1024)


class _Started(Exception):
    """A response had begun to arrive when the connection failed: never retry."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class H11Transport(httpx.AsyncBaseTransport):
    """Keep-alive HTTP/1.1 to one ``host:port`` with at most ``connections`` sockets."""

    def __init__(self, connections: int = 4) -> None:
        if connections < 1:
            raise ValueError("connections must be >= 1")
        self._slots = trio.Semaphore(connections)
        self._idle: deque[_Connection] = deque()
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "http":
            raise httpx.UnsupportedProtocol(
                f"H11Transport speaks plain http, not {request.url.scheme!r}", request=request
            )
        body = await request.aread()
        headers = [(k, v) for k, v in request.headers.raw if k.lower() != b"content-length"]
        if request.method not in ("GET", "HEAD") or body:
            headers.append((b"Content-Length", str(len(body)).encode()))
        url = request.url
        try:
            status, response_headers, content = await self.exchange(
                url.host,
                url.port or 80,
                h11.Request(method=request.method, target=url.raw_path, headers=headers),
                body,
                request.extensions.get("timeout", {}),
            )
        except httpx.TransportError as exc:
            exc.request = request
            raise
        return httpx.Response(status, headers=response_headers, content=content, request=request)

    async def exchange(
        self,
        host: str,
        port: int,
        head: h11.Request,
        body: bytes,
        timeouts: Mapping[str, float | None],
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Send one request and read its answer: ``(status, headers, body)``.

        The fast path ``CoreClient`` takes for telemetry and events, skipping httpx's
        client layers (about 0.3 ms of CPU per request here); raises httpx's errors.
        """
        with trio.move_on_after(_seconds(timeouts.get("pool"))) as waiting:
            await self._slots.acquire()
        if waiting.cancelled_caught:
            raise httpx.PoolTimeout("no free connection to Core in time")
        try:
            conn = self._idle.popleft() if self._idle else None
            while True:  # at most twice: a stale reused socket earns one fresh attempt
                try:
                    return await self._exchange(host, port, head, body, conn, timeouts)
                except _Started as started:
                    raise started.error from None
                except (httpx.TransportError, OSError) as exc:
                    if conn is None or isinstance(exc, httpx.TimeoutException):
                        raise _as_httpx(exc) from None  # a slow Core is not a stale socket
                conn = None
        finally:
            self._slots.release()

    async def _exchange(
        self,
        host: str,
        port: int,
        head: h11.Request,
        body: bytes,
        conn: _Connection | None,
        timeouts: Mapping[str, float | None],
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        if conn is None:
            conn = await self._connect(host, port, within=_seconds(timeouts.get("connect")))
        keep = False
        try:
            data = conn.h11.send(head)
            if body:
                data += conn.h11.send(h11.Data(data=body))
            data += conn.h11.send(h11.EndOfMessage())
            with trio.move_on_after(_seconds(timeouts.get("write"))) as writing:
                try:
                    await conn.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    raise httpx.WriteError(f"Core closed the connection: {exc}") from None
            if writing.cancelled_caught:
                raise httpx.WriteTimeout("timed out sending to Core")
            answer = await self._read(conn, within=_seconds(timeouts.get("read")))
            keep = conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE
            if keep:
                conn.h11.start_next_cycle()
            return answer
        finally:
            if keep and not self._closed:
                self._idle.append(conn)
            else:
                with trio.CancelScope(shield=True):
                    await conn.stream.aclose()

    async def _connect(self, host: str, port: int, *, within: float) -> _Connection:
        with trio.move_on_after(within) as connecting:
            try:
                stream = await trio.open_tcp_stream(host, port)
            except OSError as exc:
                raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}") from None
        if connecting.cancelled_caught:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out")
        return _Connection(stream)

    async def _read(
        self, conn: _Connection, *, within: float
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        status = 0
        headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []
        size = 0
        begun = False
        with trio.move_on_after(within) as reading:
            while True:
                try:
                    event = conn.h11.next_event()
                except h11.RemoteProtocolError as exc:
                    error: httpx.TransportError = httpx.RemoteProtocolError(str(exc))
                    raise (_Started(error) if begun else error) from None
                if event is h11.NEED_DATA:
                    try:
                        data = await conn.stream.receive_some(65536)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                        error = httpx.ReadError(f"Core closed the connection: {exc}")
                        raise (_Started(error) if begun else error) from None
                    if not data and not begun:
                        raise httpx.RemoteProtocolError(
                            "Core closed the connection without answering"
                        )
                    begun = True
                    conn.h11.receive_data(data)
                elif isinstance(event, h11.Response):
                    status, headers = event.status_code, list(event.headers)
                elif isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > MAX_RESPONSE:
                        raise _Started(httpx.RemoteProtocolError("Core's answer is too large"))
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    error = httpx.RemoteProtocolError("Core closed the connection mid-answer")
                    raise (_Started(error) if begun else error) from None
        if reading.cancelled_caught:
            raise _Started(httpx.ReadTimeout("Core did not answer in time"))
        return status, headers, b"".join(chunks)

    async def aclose(self) -> None:
        self._closed = True
        while self._idle:
            with trio.CancelScope(shield=True):
                await self._idle.popleft().stream.aclose()


def _seconds(value: float | None) -> float:
    return math.inf if value is None else value


def _as_httpx(error: Exception) -> httpx.TransportError:
    if isinstance(error, httpx.TransportError):
        return error
    return httpx.ConnectError(str(error))
