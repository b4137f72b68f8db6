"""One fake PiPhi Core: h11 on trio, scriptable faults, what it accepted kept in memory.

Every stand-in for Core builds on this one: the tests (``runtime.testing.FakeCore`` and the
``fake_core`` fixture), the dev Core (``runtime.devcore`` stores through ``store()`` into
SQLite and adds an admin API) and the benchmarks' sink (``bench/core_sink.py`` counts
through ``store()``). So Core's side (its paths, auth headers, de-duplication by
``telemetry_id``/``event_id``, how an outage or an overload looks) is written once.

Plain h11 rather than a web framework, for two reasons: each misbehaviour (no answer, a
reset connection, a refused connect, a wrong status) is exactly what the caller scripted,
and a request costs little CPU, so as the benchmarks' sink it does not limit the runtime
being measured.
"""

from __future__ import annotations

import json
import socket
import struct
from collections import deque
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any, Literal, get_args
from urllib.parse import parse_qs

import attrs
import h11
import trio

from ._contract.core import (
    CONFIG_FETCH_PATH,
    CONTAINER_HEADER,
    EVENTS_PATH,
    TELEMETRY_PATH,
    TOKEN_HEADER,
)

__all__ = [
    "TROUBLE_MODES",
    "Answer",
    "FakeCore",
    "H11Server",
    "Kind",
    "Received",
    "Rejected",
    "Trouble",
    "TroubleMode",
]

Answer = tuple[int, list[tuple[str, str]], bytes]
"""(status, extra response headers, body); ``content-length`` is added when sent."""
Kind = Literal["telemetry", "event"]
TroubleMode = Literal["none", "refuse", "503", "429", "slow", "drop"]
TROUBLE_MODES: tuple[str, ...] = get_args(TroubleMode)
MAX_BODY = 1 << 20
"""Request heads and bodies larger than this are refused (413 for a body)."""

_CONTAINER = CONTAINER_HEADER.lower()  # h11 hands header names over lower-cased
_TOKEN = TOKEN_HEADER.lower()
_JSON: list[tuple[str, str]] = [("content-type", "application/json")]
_PROBLEM: list[tuple[str, str]] = [("content-type", "application/problem+json")]
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_LINGER_RESET = struct.pack("ii", 1, 0)  # close() then sends RST instead of FIN
_BIND_ATTEMPTS = 50  # the port may linger for a moment after a refusal ends


@attrs.frozen
class Trouble:
    """A fault of the data port that lasts, as Core's troubles look from a runtime.

    ``refuse``: the listener is closed (port kept) and open connections are reset, so
    connects get ECONNREFUSED. ``503``/``429``: every request is answered so, with
    ``Retry-After: retry_after``. ``slow``: answers come ``delay`` seconds late. ``drop``:
    each request's connection is closed without an answer. ``until`` (trio time) ends the
    trouble by itself; None lasts until it is cleared.
    """

    mode: TroubleMode = "none"
    retry_after: float = 1.0
    delay: float = 2.0
    until: float | None = None


@attrs.frozen
class Received:
    """One payload Core accepted (2xx), with the auth headers it came with."""

    path: str
    body: dict[str, Any]
    container_id: str | None
    token: str | None
    kind: Kind


class Rejected(Exception):
    """Raised by ``FakeCore.store()`` to refuse a payload: answered ``status`` + ``detail``."""

    def __init__(self, detail: str, status: int = 422) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


class H11Server:
    """A small keep-alive HTTP/1.1 server on trio + h11; subclasses answer in ``respond()``.

    Run with ``await nursery.start(server.serve)``; ``server.port`` is then bound. The base
    owns the listener, which ``down()`` closes while keeping the port (clients see connects
    refused, as from a stopped server) and ``up()`` opens again, the open connections, and
    the h11 loop (one write per answer).
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, backlog: int = 128) -> None:
        self.host = host
        self.port = port
        self.connections = 0
        """Connections accepted so far."""
        self.most_at_once = 0
        """The most connections open at once."""
        self.protocol_errors = 0
        """Requests that were not HTTP/1.1 (answered 400, the connection closed)."""
        self._backlog = backlog
        self._listeners: list[trio.SocketListener] = []
        self._accepting = trio.CancelScope()
        self._conns: set[trio.SocketStream] = set()
        self._nursery: trio.Nursery | None = None
        self._binding = trio.Lock()
        self._down_token = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def is_down(self) -> bool:
        """Serving, but the listener is closed (refusing connections)."""
        return self._nursery is not None and not self._listeners

    async def respond(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> Answer | None:
        """The answer to one request, or None to close the connection without one.

        ``headers`` has lower-cased names."""
        raise NotImplementedError

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled; connections are served in this task's nursery."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self._listen()
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery, self._listeners = None, []

    def refuse(self, seconds: float | None = None) -> None:
        """Close the listener now, keeping the port, and reset every open connection, so
        clients get ECONNREFUSED (or ECONNRESET mid-request); back after ``seconds`` (None:
        on ``up()``). Synchronous, so a request handler or a sync test can call it."""
        self._accepting.cancel()  # before closing, so the accept loop ends as cancelled
        for listener in self._listeners:
            listener.socket.close()
        self._listeners = []
        for stream in list(self._conns):
            try:
                stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            except OSError:
                pass
            stream.socket.close()
        self._down_token += 1
        if seconds is not None:
            self._spawn(self._up_after, seconds, self._down_token)

    async def down(self, seconds: float | None = None) -> None:
        """Refuse connections from now on (``refuse()``), like a server that has stopped."""
        self.refuse(seconds)
        await trio.lowlevel.checkpoint()

    async def up(self) -> None:
        """Listen again on the same port (a no-op when listening)."""
        self._down_token += 1  # a timed return still pending is moot now
        await self._listen()

    async def drop_connections(self) -> None:
        """Close every open connection (as an idle timeout would), keep listening."""
        for conn in list(self._conns):
            await conn.aclose()

    def _spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        assert self._nursery is not None, "serve() first"
        self._nursery.start_soon(fn, *args)

    async def _up_after(self, seconds: float, token: int) -> None:
        await trio.sleep(seconds)
        if token == self._down_token:
            await self.up()

    async def _listen(self) -> None:
        assert self._nursery is not None, "serve() first"
        async with self._binding:
            if self._listeners:
                return
            listeners = await self._bind()
            self.port = listeners[0].socket.getsockname()[1]
            self._listeners = listeners
            self._accepting = scope = trio.CancelScope()
            self._nursery.start_soon(self._accept, scope, listeners)

    async def _bind(self) -> list[trio.SocketListener]:
        for attempt in range(_BIND_ATTEMPTS):
            try:
                return await trio.open_tcp_listeners(
                    self.port, host=self.host, backlog=self._backlog
                )
            except OSError:
                if attempt == _BIND_ATTEMPTS - 1:
                    raise
                await trio.sleep(0.05)
        raise AssertionError("unreachable")

    async def _accept(self, scope: trio.CancelScope, listeners: list[trio.SocketListener]) -> None:
        with scope:
            await trio.serve_listeners(self._handle, listeners, handler_nursery=self._nursery)

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        self._conns.add(stream)
        self.most_at_once = max(self.most_at_once, len(self._conns))
        try:
            await self.serve_stream(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._conns.discard(stream)
            await trio.aclose_forcefully(stream)

    async def serve_stream(self, stream: trio.abc.Stream) -> None:
        """Answer the requests of one connection, in order, until it closes. A subclass
        may frame the common case itself (``bench/core_sink.py``) and hand the rest of the
        connection to ``serve_h11``."""
        await self.serve_h11(stream)

    async def serve_h11(self, stream: trio.abc.Stream, received: bytes = b"") -> None:
        """Frame the connection with h11 from here on, ``received`` being what was read of
        it and not yet answered."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_BODY)
        if received:
            conn.receive_data(received)
        try:
            while await self._exchange(conn, stream):
                conn.start_next_cycle()
        except h11.RemoteProtocolError:
            self.protocol_errors += 1
            await _answer_garbage(conn, stream)

    async def _exchange(self, conn: h11.Connection, stream: trio.abc.Stream) -> bool:
        """One request and its answer; whether the connection may carry another."""
        request: h11.Request | None = None
        chunks: list[bytes] = []
        size = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(65536)))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > MAX_BODY:
                    await _send(conn, stream, _problem(413, f"bodies are {MAX_BODY} bytes at most"))
                    return False
                chunks.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
            else:  # ConnectionClosed (PAUSED cannot happen: one cycle at a time)
                return False
        assert request is not None
        headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in request.headers
        }
        answer = await self.respond(
            request.method.decode("ascii"),
            request.target.decode("latin-1"),
            headers,
            b"".join(chunks),
        )
        if answer is None:
            return False
        await _send(conn, stream, answer)
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE


class FakeCore(H11Server):
    """Core's three endpoints (telemetry, events, config fetch) on 127.0.0.1, with faults.

    Run with ``await nursery.start(core.serve)``; then ``core.url`` is its base URL (any
    path prefix before Core's paths is accepted, as behind a proxy). It checks auth
    (``token``: 401 when missing or wrong; ``require_container``: 401 without
    ``X-Container-Id``), not payload shapes (a subclass's ``store()`` may), and answers 2xx
    with ``{}``. Scripted, per request, in this order: ``trouble`` (``set_trouble``),
    ``delay``, auth, ``answer(path, body)`` or ``status`` with extra ``headers``.

    ``received`` holds the payloads it accepted, redeliveries included, ``attempts`` every
    request body (both bounded by ``limit``, oldest dropped; ``received_count`` and
    ``attempt_count`` count all); ``duplicates`` counts accepted payloads whose
    ``telemetry_id``/``event_id`` it had seen (among the last ``remember``).
    """

    requests: int
    """Every request, whatever its answer."""
    received_count: int
    attempt_count: int
    duplicates: int
    overloaded: int
    """Requests answered 503/429 by a ``Trouble``."""
    bad_requests: int
    """Bodies that were not a JSON object, or that ``store()`` rejected."""

    def __init__(
        self,
        *,
        token: str | None = None,
        require_container: bool = False,
        limit: int = 100_000,
        remember: int = 1_000_000,
        host: str = "127.0.0.1",
        port: int = 0,
        backlog: int = 128,
    ) -> None:
        super().__init__(host=host, port=port, backlog=backlog)
        self.token = token
        """When set, requests without this token get 401."""
        self.require_container = require_container
        self.status = 200
        """Answer this status (with ``headers``) instead; non-2xx stores nothing."""
        self.headers: list[tuple[str, str]] = []
        self.delay = 0.0
        """Seconds to wait before answering each request."""
        self.answer: Callable[[str, dict[str, Any]], int | None] | None = None
        """Per request: ``answer(path, body)`` may return a status to answer instead."""
        self.configs: list[Any] = []
        """The config fetch's rows (``config_rows()``)."""
        self._arrival = trio.lowlevel.ParkingLot()
        self.received: deque[Received] = deque(maxlen=limit)
        self.attempts: deque[tuple[str, dict[str, Any]]] = deque(maxlen=limit)
        """(target, body) of every request that had a body."""
        self._trouble = Trouble()
        self._seen: set[tuple[str, str]] = set()
        self._seen_order: deque[tuple[str, str]] = deque(maxlen=max(1, remember))
        self.clear()

    # -- what arrived ----------------------------------------------------------------------

    def telemetry(self) -> list[dict[str, Any]]:
        """Accepted telemetry payloads, oldest first, redeliveries included."""
        return [r.body for r in self.received if r.kind == "telemetry"]

    def events(self) -> list[dict[str, Any]]:
        """Accepted event payloads, oldest first, redeliveries included."""
        return [r.body for r in self.received if r.kind == "event"]

    def clear(self) -> None:
        """Forget what arrived and zero the counters; auth, configs and faults stay."""
        self.received.clear()
        self.attempts.clear()
        self._seen.clear()
        self._seen_order.clear()
        self.requests = self.received_count = self.attempt_count = 0
        self.duplicates = self.overloaded = self.bad_requests = self.protocol_errors = 0
        self.connections = 0
        self.most_at_once = len(self._conns)

    # -- the seams -------------------------------------------------------------------------

    async def next_arrival(self) -> None:
        """Wait until the next payload is accepted: for tests that wait on Core rather than
        poll it."""
        await self._arrival.park()

    async def store(self, kind: Kind, payload: dict[str, Any], headers: Mapping[str, str]) -> bool:
        """Keep an accepted payload; whether it is new (not a redelivery).

        The seam for subclasses: the dev Core writes to SQLite, the bench sink counts.
        Raise ``Rejected`` to refuse the payload. Here: remembered by ``telemetry_id`` or
        ``event_id``; a payload without one counts as new."""
        key = payload.get("telemetry_id" if kind == "telemetry" else "event_id")
        if not isinstance(key, str) or not key:
            return True
        item = (kind, key)
        if item in self._seen:
            return False
        order = self._seen_order
        if len(order) == order.maxlen:
            self._seen.discard(order[0])
        order.append(item)
        self._seen.add(item)
        return True

    async def config_rows(self, container_id: str | None) -> list[Any]:
        """The config fetch's answer for ``container_id`` (here: ``configs``, whoever asks)."""
        return self.configs

    # -- faults ----------------------------------------------------------------------------

    @property
    def trouble(self) -> Trouble:
        """The trouble now (one whose ``until`` has passed is over)."""
        trouble = self._trouble
        until = trouble.until
        if until is not None and trouble.mode != "none" and trio.current_time() >= until:
            self._trouble = trouble = Trouble()
        return trouble

    @trouble.setter
    def trouble(self, trouble: Trouble) -> None:
        self.set_trouble(trouble)

    def set_trouble(self, trouble: Trouble) -> None:
        """Start ``trouble`` (``Trouble()`` ends any); ``refuse`` closes the port until it
        ends, any other mode opens it again."""
        self._trouble = trouble
        if trouble.mode == "refuse":
            until = trouble.until
            self.refuse(None if until is None else max(0.0, until - trio.current_time()))
        elif self.is_down:
            self._spawn(self.up)

    async def up(self) -> None:
        """Listen again; a ``refuse`` trouble ends with it."""
        if self._trouble.mode == "refuse":
            self._trouble = Trouble()
        await super().up()

    # -- answering -------------------------------------------------------------------------

    async def respond(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> Answer | None:
        self.requests += 1
        payload: dict[str, Any] = {}
        if body:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict):
                self.bad_requests += 1
                return _problem(400, "the body is not a JSON object")
            payload = parsed
            self.attempt_count += 1
            if self.attempts.maxlen != 0:
                self.attempts.append((target, payload))
        trouble = self.trouble
        if trouble.mode == "drop":
            return None
        delay = self.delay + (trouble.delay if trouble.mode == "slow" else 0.0)
        if delay > 0:
            await trio.sleep(delay)
        if trouble.mode in ("503", "429"):
            self.overloaded += 1
            retry_after = ("retry-after", f"{trouble.retry_after:g}")
            return _problem(int(trouble.mode), "Core is overloaded (simulated)", [retry_after])
        return await self._answer(method, target, headers, payload)

    async def _answer(
        self, method: str, target: str, headers: dict[str, str], payload: dict[str, Any]
    ) -> Answer:
        path, _, query = target.partition("?")
        status, extra = self.status, self.headers
        if self.answer is not None:
            chosen = self.answer(path, payload)
            if chosen is not None:
                status = chosen
        if self.require_container and not headers.get(_CONTAINER):
            return _problem(401, "X-Container-Id is missing")
        if self.token is not None and headers.get(_TOKEN) != self.token:
            return _problem(401, "the integration token is missing or wrong")
        if not 200 <= status < 300:
            return _problem(status, "the status this fake Core was told to answer", extra)
        if method == "GET" and path.endswith(CONFIG_FETCH_PATH):
            container = parse_qs(query).get("container_id", [None])[-1]
            rows = json.dumps(await self.config_rows(container)).encode()
            return status, [*_JSON, *extra], rows
        if method == "POST" and path.endswith(TELEMETRY_PATH):
            return await self._take("telemetry", status, extra, path, headers, payload)
        if method == "POST" and path.endswith(EVENTS_PATH):
            return await self._take("event", status, extra, path, headers, payload)
        return _problem(404, f"Core serves no {method} {path}")

    async def _take(
        self,
        kind: Kind,
        status: int,
        extra: list[tuple[str, str]],
        path: str,
        headers: dict[str, str],
        payload: dict[str, Any],
    ) -> Answer:
        try:
            new = await self.store(kind, payload, headers)
        except Rejected as exc:
            self.bad_requests += 1
            return _problem(exc.status, exc.detail)
        if not new:
            self.duplicates += 1
        self.received_count += 1
        self._arrival.unpark_all()
        if self.received.maxlen != 0:
            token, container = headers.get(_TOKEN), headers.get(_CONTAINER)
            self.received.append(Received(path, payload, container, token, kind))
        return status, [*_JSON, *extra] if extra else _JSON, b"{}"


def _problem(status: int, detail: str, extra: list[tuple[str, str]] | None = None) -> Answer:
    body = json.dumps({"type": "about:blank", "status": status, "detail": detail}).encode()
    return status, [*_PROBLEM, *extra] if extra else _PROBLEM, body


def _sent(conn: h11.Connection, event: h11.Event) -> bytes:
    data = conn.send(event)
    assert data is not None  # only ConnectionClosed sends nothing
    return data


async def _send(conn: h11.Connection, stream: trio.abc.Stream, answer: Answer) -> None:
    status, extra, data = answer
    headers = [*extra, ("content-length", str(len(data)))]
    response = h11.Response(status_code=status, headers=headers, reason=_REASONS.get(status, b""))
    await stream.send_all(
        _sent(conn, response) + _sent(conn, h11.Data(data=data)) + _sent(conn, h11.EndOfMessage())
    )


async def _answer_garbage(conn: h11.Connection, stream: trio.abc.Stream) -> None:
    """Answer 400 to what was not HTTP/1.1, when the connection still allows an answer."""
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    try:
        status, _, data = _problem(400, "not an HTTP/1.1 request")
        headers = [*_PROBLEM, ("content-length", str(len(data))), ("connection", "close")]
        await stream.send_all(
            _sent(conn, h11.Response(status_code=status, headers=headers))
            + _sent(conn, h11.Data(data=data))
            + _sent(conn, h11.EndOfMessage())
        )
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
        pass
