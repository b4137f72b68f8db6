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
import os
import select
from collections import deque
from collections.abc import Callable, Mapping

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


# -- one lane's own connection: several requests per write, answers read in order ------------

#: A request head and its body; see ``Pipeline.exchange``.
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]
#: Answers larger than this, or with an unusual framing, are read with h11, not parsed here.
SIMPLE_BODY_MAX = 64 * 1024
SIMPLE_HEAD_MAX = 8 * 1024
#: How long the answers to a batch the socket could not take at once wait for its write
#: to end before they are read as they come (so a server that stops reading while its
#: answers back up waits this long).
READ_PATIENCE = 0.05
#: The rest of such a batch is written in pieces this large; each that is out pushes the
#: caller's deadline (``progress``).
WRITE_PIECE = 64 * 1024
_CONTENT_LENGTH = b"\r\ncontent-length:"
_HEADERS: list[tuple[bytes, bytes]] = []  # what a plainly parsed 2xx answer hands on


class PipelineBroken(Exception):
    """The connection failed with part of a batch unanswered.

    ``answers`` came in before it did (for the first requests of the batch, in order);
    ``error`` says how it failed, as an httpx error; ``started`` is true when an answer
    had begun to arrive (so its request may have been processed).
    """

    def __init__(self, answers: list[Answer], error: httpx.TransportError, started: bool) -> None:
        super().__init__(str(error))
        self.answers = answers
        self.error = error
        self.started = started


class Pipeline:
    """One keep-alive HTTP/1.1 connection to ``host:port`` owned by one sender (a lane).

    ``exchange()`` writes a batch of ready-made requests and reads their answers in order
    (HTTP/1.1 pipelining: a server answers a connection's requests in the order they
    came); what the socket cannot take at once is written while the answers are read.
    The common answer, a small 2xx with a ``Content-Length``, is parsed here in a few
    microseconds; anything else (another status, chunked, large, a 1xx, a malformed
    head) is read by h11 exactly as ``H11Transport`` would. No timeouts
    of its own: the caller bounds each exchange (the outbox's lane holds one long-lived
    deadline, docs/design.md), and ``answers`` says what had arrived when it fired.

    A batch that fails on a reused connection before any byte of an answer arrived is
    written once more on a fresh one: the server may have closed the idle socket.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._stream: trio.SocketStream | None = None
        self._reused = False
        self._poll = select.poll()  # the connection's own, registered on connect
        self.answers: list[Answer] = []
        """Answers of the batch in flight (or the last one) so far, in request order."""
        self.started = False
        """An answer had begun to arrive past the last complete one."""
        self.connects = 0
        self.progress: Callable[[], None] | None = None
        """Called whenever bytes of an answer arrive (the caller may extend its deadline)."""

    async def exchange(self, chunks: list[bytes], count: int) -> list[Answer]:
        """Send ``count`` whole HTTP/1.1 requests (``chunks`` joined) and return their
        answers; raises ``PipelineBroken`` when the connection fails before every one came.
        """
        self.answers = []
        self.started = False
        data = b"".join(chunks)
        try:
            return await self._exchange(data, count)
        except PipelineBroken as broken:
            if not (self._reused and not broken.answers and not broken.started):
                raise
        # A stale kept-alive socket: once more on a fresh connection.
        self.answers = []
        self.started = False
        return await self._exchange(data, count)

    async def _exchange(self, data: bytes, want: int) -> list[Answer]:
        stream = self._stream
        if stream is not None and self._poll.poll(0):
            # Bytes no request of ours asked for (a server's 408 on an idle connection),
            # or its end: read as the next batch's answers, they would be misbooked.
            await self.close()
            stream = None
        if stream is None:
            stream = await self._connect()
        else:
            self._reused = True
        # What the socket takes at once goes out without a task or a wait (its file is
        # non-blocking, as trio keeps every socket): small batches whole, large ones up to
        # what trio's TCP_NOTSENT_LOWAT (16 KiB) lets the kernel queue (~140 KB here).
        view = memoryview(data)
        sent = 0
        try:
            while sent < len(view):
                sent += os.write(stream.socket.fileno(), view[sent:])
        except BlockingIOError:
            return await self._write_while_reading(stream, view[sent:], want)
        except OSError as exc:
            await self.close()
            error = httpx.WriteError(f"Core closed the connection: {exc}")
            raise PipelineBroken([], error, False) from None
        return await self._read(stream, want)

    async def _write_while_reading(
        self, stream: trio.SocketStream, data: memoryview, want: int
    ) -> list[Answer]:
        """The rest of a batch the socket could not take at once: written by a task of
        its own, in pieces, while this one reads the answers. Written whole before
        reading, it deadlocks with a server that stops reading while its answers wait to
        be sent (most do) once the answers outgrow the two sockets' buffers; and a write
        that makes headway pushes the caller's deadline as answers do. The reader waits
        up to ``READ_PATIENCE`` for the write to end first: answers read as they trickle
        in cost a wake-up each."""
        written = False
        ended = trio.Event()

        async def write() -> None:
            nonlocal written
            try:
                for at in range(0, len(data), WRITE_PIECE):
                    await stream.send_all(data[at : at + WRITE_PIECE])
                    if self.progress is not None:
                        self.progress()
                written = True
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass  # the reader finds the connection's end and says what came before
            finally:
                ended.set()

        broken: PipelineBroken | None = None
        answered = False
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(write)
                try:
                    with trio.move_on_after(READ_PATIENCE):
                        await ended.wait()
                    answers = await self._read(stream, want)
                    answered = True
                except PipelineBroken as exc:
                    broken = exc
                nursery.cancel_scope.cancel()
        finally:
            if not (written and answered):
                # Cut off before every answer was read, or every answer came before the
                # batch was all out: the connection's next answers would be wrong.
                await self.close()
        if broken is not None:
            raise broken
        return answers

    async def _read(self, stream: trio.SocketStream, want: int) -> list[Answer]:
        """Read answers on ``self.answers`` until it holds ``want``. A buffer of many
        answers is parsed by offset: cutting the rest off after each would copy it."""
        answers = self.answers
        buffer = b""
        at = 0
        try:
            while True:
                while len(answers) < want:
                    parsed = _parse_simple(buffer, at)
                    if parsed is None:
                        break
                    if parsed is _UNUSUAL:
                        answer, buffer, closing = await self._read_with_h11(stream, buffer[at:])
                        at = 0
                    else:
                        status, start, at, closing = parsed  # type: ignore[misc]
                        answer = (status, _HEADERS, buffer[start:at])
                    answers.append(answer)
                    self.started = at < len(buffer)
                    if closing:
                        await self._closing(len(answers) < want)
                        return answers
                if len(answers) == want:
                    if at < len(buffer):  # bytes no request asked for: see _exchange
                        await self.close()
                    return answers
                buffer = buffer[at:] + await self._receive(stream, at < len(buffer))
                at = 0
                self.started = True
                if self.progress is not None:
                    self.progress()
        except BaseException:
            if len(answers) < want:
                await self.close()
            raise

    async def _connect(self) -> trio.SocketStream:
        self._reused = False  # also when it fails: a refused connect is no stale socket
        try:
            stream = await trio.open_tcp_stream(self.host, self.port)
        except OSError as exc:
            error = httpx.ConnectError(f"cannot connect to {self.host}:{self.port}: {exc}")
            raise PipelineBroken([], error, False) from None
        self._stream = stream
        self._poll = select.poll()
        self._poll.register(stream.socket.fileno(), select.POLLIN)
        self.connects += 1
        return stream

    async def _receive(self, stream: trio.SocketStream, begun: bool) -> bytes:
        try:
            data = await stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            await self.close()
            error = httpx.ReadError(f"Core closed the connection: {exc}")
            raise PipelineBroken(self.answers, error, begun) from None
        if not data:
            await self.close()
            raise PipelineBroken(
                self.answers,
                httpx.RemoteProtocolError("Core closed the connection without answering"),
                begun,
            )
        return data

    async def _closing(self, unanswered: bool) -> None:
        """The server said it closes the connection after this answer."""
        await self.close()
        if unanswered:
            raise PipelineBroken(
                self.answers,
                httpx.RemoteProtocolError("Core closed the connection after an answer"),
                False,
            )

    async def _read_with_h11(
        self, stream: trio.SocketStream, buffer: bytes
    ) -> tuple[Answer, bytes, bool]:
        """One answer that is not a plain small 2xx, read by h11 from ``buffer`` on."""
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=64 * 1024)
        # h11 reads an answer only after it wrote the request it answers.
        conn.send(h11.Request(method="POST", target="/", headers=[("Host", self.host)]))
        conn.send(h11.EndOfMessage())
        conn.receive_data(buffer)
        status, headers, chunks, size = 0, [], [], 0
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                await self.close()
                error = httpx.RemoteProtocolError(str(exc))
                raise PipelineBroken(self.answers, error, True) from None
            if event is h11.NEED_DATA:
                conn.receive_data(await self._receive(stream, True))
                if self.progress is not None:
                    self.progress()
            elif isinstance(event, h11.Response):
                status, headers = event.status_code, list(event.headers)
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > MAX_RESPONSE:
                    await self.close()
                    error = httpx.RemoteProtocolError("Core's answer is too large")
                    raise PipelineBroken(self.answers, error, True)
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                rest, _closed = conn.trailing_data
                closing = conn.their_state is not h11.DONE or conn.our_state is not h11.DONE
                return (status, headers, b"".join(chunks)), bytes(rest), closing
            elif isinstance(event, h11.ConnectionClosed):
                await self.close()
                error = httpx.RemoteProtocolError("Core closed the connection mid-answer")
                raise PipelineBroken(self.answers, error, True)

    async def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with trio.CancelScope(shield=True):
                await stream.aclose()


class _Unusual:
    """``_parse_simple``'s answer for what h11 must read."""


_UNUSUAL = _Unusual()


def _parse_simple(buffer: bytes, at: int = 0) -> tuple[int, int, int, bool] | _Unusual | None:
    """A whole plain answer at ``buffer[at:]``: ``(status, body start, body end,
    closing)``, offsets into ``buffer``; None if more bytes are needed; ``_UNUSUAL`` unless
    it is a 2xx with one ``Content-Length`` of at most ``SIMPLE_BODY_MAX`` and no
    ``Transfer-Encoding``."""
    end = buffer.find(b"\r\n\r\n", at)
    if end < 0:
        return _UNUSUAL if len(buffer) - at > SIMPLE_HEAD_MAX else None
    if not buffer.startswith(b"HTTP/1.1 2", at) or end - at > SIMPLE_HEAD_MAX:
        return _UNUSUAL
    code = buffer[at + 9 : at + 12]
    if not code.isdigit() or buffer[at + 12 : at + 13] not in (b" ", b"\r"):
        return _UNUSUAL
    head = buffer[at:end].lower()
    end -= at
    found = head.find(_CONTENT_LENGTH)
    if found < 0 or b"transfer-encoding" in head or head.find(_CONTENT_LENGTH, found + 1) >= 0:
        return _UNUSUAL
    line_end = head.find(b"\r\n", found + 2)
    value = head[found + len(_CONTENT_LENGTH) : end if line_end < 0 else line_end].strip()
    if not value.isdigit() or len(value) > 6 or int(value) > SIMPLE_BODY_MAX:
        return _UNUSUAL
    start = at + end + 4
    stop = start + int(value)
    if len(buffer) < stop:
        return None
    closing = False
    if b"\r\nconnection:" in head:
        found = head.find(b"\r\nconnection:")
        line_end = head.find(b"\r\n", found + 2)
        closing = b"close" in head[found : end if line_end < 0 else line_end]
    return int(code), start, stop, closing
