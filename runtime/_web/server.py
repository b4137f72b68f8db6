"""How ``piphi-runtime serve`` serves the app: hypercorn's HTTP/1.1 connections behind an
accept gate of the runtime's own.

``hypercorn.trio.serve`` accepts every connection it can. With the usual container file
limit of 1,024, 1,100 slow clients used up every descriptor: ``/health`` timed out, and
when they left, a race in hypercorn's connection close raised ``BusyResourceError`` out of
the server and ended the process (issue 14, item 5; docs/design.md, hypercorn).
``serve_http`` is hypercorn's trio worker (``hypercorn.trio.run.worker_serve``: the ASGI
lifespan, then one accept loop per socket) with these differences:

- **A connection cap** (``ConnectionLimits``): at most ``max_connections`` connections are
  served at once, by default half the file limit and at most 1,000, because the other half
  belongs to the actors, the databases and the connections to Core. Beyond the cap an
  *overflow lane* of a few dozen connections reads each request's head for up to a second
  and answers it without hypercorn: ``GET /health`` through the app, so liveness probes
  see the process alive while it sheds, anything else 503 problem+json with
  ``Retry-After``. Beyond the lane a connection gets that 503 unread and is closed.
- **Per connection** (``_Connection``, a hypercorn ``TCPServer``): hypercorn's own error
  answers (400 when h11 cannot parse a request, 431 when its head exceeds
  ``h11_max_incomplete_size``) get a problem+json body instead of none; a client that
  takes no part of its response for ``send_timeout`` is disconnected (no read timeout
  may cut a handler, see ``runtime._serve.hypercorn_config``); closing takes the send
  lock (hypercorn's ``send_eof`` raced with a send); a connection whose client has gone
  ends at once instead of at its keep-alive timer; a connection closed after a request
  it could not take reads what the client still sends (``LINGER``) so the answer is not
  lost to a reset; an error in one connection is logged, never raised into the server.
- **Supervision** (``serve_supervised``): the sockets are bound once, and the server is
  restarted on them after an unexpected error, so one listener failure does not take the
  runtime down.

Plain HTTP/1.1, which is what Core speaks. Under hypercorn's own CLI the app still works,
without any of this.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import re
import resource
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from http import HTTPStatus
from typing import Any, Literal
from urllib.parse import unquote

import attrs
import h11
import trio
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ASGIFramework, ConnectionState
from hypercorn.utils import repr_socket_addr, wrap_app

from .._contract import PROBLEM_JSON
from .problem import Problem

__all__ = ["ConnectionLimits", "serve_http", "serve_supervised"]

log = logging.getLogger("runtime.http")

#: Connections served at once at most, whatever the file limit: Core needs a handful, and
#: each costs memory (hypercorn's state, tasks, buffers).
MAX_CONNECTIONS = 1000
#: Connections the overflow lane answers at once, at most.
OVERFLOW = 64
#: The largest request head the overflow lane reads.
_HEAD_LIMIT = 8192
#: A response is written in parts of this size, each within ``send_timeout``.
_SEND_PART = 64 * 1024
#: After answering and closing its side, a connection reads and discards what the client
#: still sends for at most this long (and this much) before it closes: closing with unread
#: data sends a reset, and the client's kernel may drop the answer it had not yet read
#: (a 431 for a 100 kB head was lost that way). What web servers call a lingering close.
LINGER = 1.0
_LINGER_BYTES = 1024 * 1024
#: Restarts after unexpected errors: the first after RESTART_DELAY, doubling up to
#: RESTART_MAX_DELAY; more than MAX_RESTARTS within RESTART_WINDOW end the process, as a
#: server that cannot stay up is better restarted whole by the orchestrator.
RESTART_DELAY = 0.1
RESTART_MAX_DELAY = 5.0
MAX_RESTARTS = 10
RESTART_WINDOW = 60.0
#: What accept() raises when the process or the system is out of descriptors or memory.
_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})

Lane = Literal["serve", "overflow", "refuse"]


@attrs.frozen
class ConnectionLimits:
    """How many connections are served at once, and how long a client may stall."""

    max_connections: int
    overflow: int = OVERFLOW
    send_timeout: float = 10.0
    """A client that takes no 64 KiB of its response for this long is disconnected."""
    head_timeout: float = 1.0
    """How long the overflow lane waits for a request's head."""
    priority_paths: frozenset[str] = frozenset({"/health"})
    """``GET`` paths the overflow lane still answers through the app."""

    @classmethod
    def for_file_limit(cls, nofile: int | None = None) -> ConnectionLimits:
        """Half of ``nofile`` (default: this process's soft ``RLIMIT_NOFILE``) for HTTP,
        the lane included, at most ``MAX_CONNECTIONS``; the other half is everything else's."""
        if nofile is None:
            nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            if nofile == resource.RLIM_INFINITY or nofile < 0:
                nofile = 2 * (MAX_CONNECTIONS + OVERFLOW)
        half = max(nofile // 2, 2)
        overflow = max(1, min(OVERFLOW, half // 8))
        return cls(max_connections=max(1, min(MAX_CONNECTIONS, half - overflow)), overflow=overflow)


@attrs.define
class _Gate:
    """Counts the connections being served and those in the overflow lane."""

    limits: ConnectionLimits
    serving: int = 0
    overflowing: int = 0
    shed: int = 0
    """Connections turned away since the cap was last reached."""
    full: bool = False

    def admit(self) -> Lane:
        if self.serving < self.limits.max_connections:
            self.serving += 1
            return "serve"
        self.shed += 1
        if not self.full:
            self.full = True
            log.warning(
                "%d connections open, the cap: new ones are answered 503 (GET /health still "
                "answers) until some close",
                self.serving,
            )
        if self.overflowing < self.limits.overflow:
            self.overflowing += 1
            return "overflow"
        return "refuse"

    def release(self) -> None:
        self.serving -= 1
        if self.full and self.serving < 0.9 * self.limits.max_connections:
            log.warning("below the connection cap again; %d were turned away", self.shed)
            self.full, self.shed = False, 0

    def overflow_done(self) -> None:
        self.overflowing -= 1


async def serve_supervised(
    app: ASGIFramework,
    config: Config,
    *,
    limits: ConnectionLimits,
    shutdown_trigger: Callable[[], Awaitable[None]],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Bind ``config.bind`` once and run ``serve_http`` on those sockets until
    ``shutdown_trigger`` returns and the connections have drained.

    An error before the server first answers (binding, the app's start-up) is raised. An
    unexpected error after it is logged and the server restarts on the same sockets (same
    port, nothing to rebind), unless it keeps failing (``MAX_RESTARTS``)."""
    if config.ssl_enabled:
        raise ValueError("serve_supervised serves plain HTTP; terminate TLS in front of it")
    listening = config.create_sockets().insecure_sockets
    try:
        for sock in listening:
            sock.listen(config.backlog)
        failures: deque[float] = deque()
        started = False
        while True:
            try:
                async with trio.open_nursery() as nursery:
                    urls = await nursery.start(
                        partial(
                            serve_http,
                            app,
                            config,
                            listening,
                            limits=limits,
                            shutdown_trigger=shutdown_trigger,
                        )
                    )
                    if not started:
                        started = True
                        task_status.started(urls)
                return
            except Exception as exc:
                if not started:
                    raise
                now = trio.current_time()
                failures.append(now)
                while failures[0] < now - RESTART_WINDOW:
                    failures.popleft()
                if len(failures) > MAX_RESTARTS:
                    log.critical(
                        "the HTTP server failed %d times within %g s", len(failures), RESTART_WINDOW
                    )
                    raise
                delay = min(RESTART_MAX_DELAY, RESTART_DELAY * 2 ** (len(failures) - 1))
                log.error(
                    "the HTTP server failed; restarting it on the same sockets in %g s",
                    delay,
                    exc_info=exc,
                )
                await trio.sleep(delay)
    finally:
        for sock in listening:
            sock.close()


async def serve_http(
    app: ASGIFramework,
    config: Config,
    sockets: Sequence[socket.socket],
    *,
    limits: ConnectionLimits,
    shutdown_trigger: Callable[[], Awaitable[None]],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """hypercorn's ``worker_serve`` on listening ``sockets``, behind the gate: the app's
    lifespan, then accept loops until ``shutdown_trigger`` returns; then, like hypercorn,
    idle connections close, requests in flight get ``config.graceful_timeout``, and the
    lifespan shuts down. Started with the URLs served."""
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, config, state)
    context = WorkerContext(None)
    gate = _Gate(limits)

    async def serve_one(stream: trio.SocketStream) -> None:
        connection = _Connection(
            wrapped, config, context, ConnectionState(state.copy()), stream, limits.send_timeout
        )
        try:
            await connection.run()
        except* Exception as errors:  # a cancellation still goes through
            log.warning("a connection ended with an error; serving goes on", exc_info=errors)
        finally:
            gate.release()

    async def overflow_one(stream: trio.SocketStream) -> None:
        try:
            await _answer_overflow(app, stream, limits)
        finally:
            gate.overflow_done()

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as connections:
            listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in sockets]
            task_status.started(
                [f"http://{repr_socket_addr(s.family, s.getsockname())}" for s in sockets]
            )
            try:
                async with trio.open_nursery() as accepting:
                    for listener in listeners:
                        accepting.start_soon(
                            _accept_loop, listener, gate, connections, serve_one, overflow_one
                        )
                    await shutdown_trigger()
                    accepting.cancel_scope.cancel()
            finally:
                await context.terminated.set()  # idle connections close now
                connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


Handler = Callable[[trio.SocketStream], Awaitable[None]]


async def _accept_loop(
    listener: trio.SocketListener,
    gate: _Gate,
    nursery: trio.Nursery,
    serve_one: Handler,
    overflow_one: Handler,
) -> None:
    """Accept for ever; each connection is served, sent to the overflow lane, or refused."""
    warned = -math.inf
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno not in _CAPACITY_ERRNOS:
                raise
            # Something else holds the descriptors (the cap leaves room for the rest):
            # wait rather than spin, as trio.serve_listeners does; say so now and then.
            if trio.current_time() - warned > 10:
                warned = trio.current_time()
                log.warning("accept: %s; retrying every 0.1 s", errno.errorcode[exc.errno or 0])
            await trio.sleep(0.1)
            continue
        lane = gate.admit()
        if lane == "serve":
            nursery.start_soon(serve_one, stream)
        elif lane == "overflow":
            nursery.start_soon(overflow_one, stream)
        else:
            await _refuse(stream)


async def _refuse(stream: trio.SocketStream) -> None:
    """The 503 without reading the request (it fits in an empty socket buffer), then close."""
    with trio.move_on_after(0.05):
        try:
            await stream.send_all(_OVER_CAPACITY)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    await trio.aclose_forcefully(stream)


# -- the overflow lane -------------------------------------------------------------------


async def _answer_overflow(
    app: ASGIFramework, stream: trio.SocketStream, limits: ConnectionLimits
) -> None:
    """Answer one request past the cap without hypercorn, then close: ``GET`` of a
    priority path through the app, anything else (or no head within ``head_timeout``) 503.
    The whole exchange is bounded by twice ``head_timeout``."""
    try:
        with trio.move_on_after(2 * limits.head_timeout):
            request = await _read_head(stream, limits.head_timeout)
            answer = _OVER_CAPACITY
            if request is not None and _is_priority(request, limits):
                answer = await _ask_app(app, request, stream)
            # Then closed at once: the lane's places are few. If the client sent more than
            # its head, the close resets the connection, but the answer has arrived first.
            await stream.send_all(answer)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    except Exception:
        log.warning("answering past the connection cap failed", exc_info=True)
    finally:
        await trio.aclose_forcefully(stream)


async def _read_head(stream: trio.SocketStream, timeout: float) -> h11.Request | None:  # noqa: ASYNC109 - real seconds
    """The request's line and headers, or None if they do not come whole in time."""
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=_HEAD_LIMIT)
    with trio.move_on_after(timeout):
        while True:
            try:
                event = connection.next_event()
            except h11.RemoteProtocolError:
                return None
            if isinstance(event, h11.Request):
                return event
            if event is not h11.NEED_DATA:
                return None
            connection.receive_data(await stream.receive_some(_HEAD_LIMIT))
    return None


def _is_priority(request: h11.Request, limits: ConnectionLimits) -> bool:
    path = request.target.partition(b"?")[0].decode("latin-1")
    return request.method == b"GET" and path in limits.priority_paths


async def _ask_app(app: ASGIFramework, request: h11.Request, stream: trio.SocketStream) -> bytes:
    """One bodiless request through the ASGI app; its answer, to be sent with
    ``Connection: close``."""
    path, _, query = request.target.partition(b"?")
    scope: Any = {
        "type": "http",
        "asgi": {"spec_version": "2.1", "version": "3.0"},
        "http_version": request.http_version.decode(),
        "method": request.method.decode(),
        "scheme": "http",
        "path": unquote(path.decode("latin-1")),
        "raw_path": path,
        "query_string": query,
        "root_path": "",
        "headers": list(request.headers),
        "client": stream.socket.getpeername()[:2],
        "server": stream.socket.getsockname()[:2],
        "extensions": {},
        "state": {},
    }
    answer: dict[str, Any] = {"status": 500, "headers": [], "body": bytearray()}
    done = trio.Event()
    asked = False

    async def receive() -> Any:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            answer["status"], answer["headers"] = message["status"], message.get("headers", [])
        elif message["type"] == "http.response.body":
            answer["body"] += message.get("body", b"")
            if not message.get("more_body", False):
                done.set()

    await app(scope, receive, send)
    return _raw_response(answer["status"], answer["headers"], bytes(answer["body"]))


def _raw_response(status: int, headers: Sequence[tuple[bytes, bytes]], body: bytes) -> bytes:
    skip = {b"content-length", b"connection", b"transfer-encoding"}
    lines = [f"HTTP/1.1 {status} {_phrase(status)}".encode()]
    lines += [name + b": " + value for name, value in headers if name.lower() not in skip]
    lines += [b"content-length: %d" % len(body), b"connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _problem_head_and_body(problem: Problem) -> tuple[list[tuple[bytes, bytes]], bytes]:
    body = problem.document().model_dump_json(exclude_none=True).encode()
    headers = [(b"content-type", PROBLEM_JSON.encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in problem.headers.items()]
    return headers, body


_OVER_CAPACITY = _raw_response(
    503,
    *_problem_head_and_body(
        Problem(
            503,
            "The runtime is serving as many connections as it can.",
            code="over_capacity",
            hint="Retry in a second; reuse one connection instead of opening many.",
            headers={"Retry-After": "1"},
        )
    ),
)


# -- one connection --------------------------------------------------------------------------

#: hypercorn's own error answer, as h11 writes it: a status, no body, closing.
_EMPTY_ERROR = re.compile(
    rb"HTTP/1\.1 ([45]\d\d) [^\r\n]*\r\ncontent-length: 0\r\nconnection: close\r\n"
    rb"((?:[^\r\n]+\r\n)*)\r\n\Z"
)


class _Connection(TCPServer):
    """hypercorn's connection, with problem+json error bodies, a send timeout, and a close
    that waits for a send in progress (see the module docstring)."""

    def __init__(
        self,
        app: AppWrapper,
        config: Config,
        context: WorkerContext,
        state: ConnectionState,
        stream: trio.SocketStream,
        send_timeout: float,
    ) -> None:
        super().__init__(app, config, context, state, stream)  # type: ignore[arg-type]
        self._send_timeout = send_timeout
        self._reader: trio.lowlevel.Task | None = None

    async def protocol_send(self, event: Event) -> None:
        if not isinstance(event, RawData):
            await super().protocol_send(event)
            return
        if not event.data:  # the end of a sized body: nothing to write
            return
        data = _with_problem_body(event.data, self.config)
        parts = [data] if len(data) <= _SEND_PART else _parts(data)
        async with self.send_lock:
            try:
                for part in parts:
                    # Shielded as in hypercorn, so a handler's cancellation never cuts a
                    # response in half; but a client that stops reading is not waited for.
                    deadline = trio.current_time() + self._send_timeout
                    with trio.CancelScope(shield=True, deadline=deadline) as scope:
                        await self.stream.send_all(part)
                    if scope.cancelled_caught:
                        raise trio.TooSlowError
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await self.protocol.handle(Closed())
            except trio.TooSlowError:
                log.info("a client took none of its response for %g s: closed", self._send_timeout)
                await trio.aclose_forcefully(self.stream)  # the reading task ends too
                await self.protocol.handle(Closed())

    async def _read_data(self) -> None:
        """hypercorn's reading loop; when it ends (the client closed, or the connection
        was closed) the keep-alive timer stops too. hypercorn leaves it running, and the
        connection (its descriptor, its place under the cap) lasted until the timer
        fired, up to ``keep_alive_timeout`` after the client had gone."""
        self._reader = trio.lowlevel.current_task()
        try:
            await super()._read_data()
        finally:
            self._reader = None
            await self.idle_task.stop()

    async def _close(self) -> None:
        """hypercorn's ``send_eof`` + ``aclose``, under the send lock: without it the
        ``send_eof`` of one task raced with a ``send_all`` of another, and the
        ``BusyResourceError`` ended the server. Frees the descriptor even when cancelled."""
        try:
            if self.send_lock.statistics().owner is trio.lowlevel.current_task():
                await self._linger_and_close()
            else:
                async with self.send_lock:
                    await self._linger_and_close()
        except BaseException:
            await trio.aclose_forcefully(self.stream)
            raise

    async def _linger_and_close(self) -> None:
        """hypercorn's close, draining the client's unread data first (``LINGER``) when
        the reading task closes: only it may read, and an answer to a request it could
        not take (400, 431) is exactly the case that leaves data unread."""
        if self._reader is not trio.lowlevel.current_task():
            await super()._close()
            return
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.stream.send_eof()
            with trio.move_on_after(LINGER):
                drained = 0
                while drained < _LINGER_BYTES and (chunk := await self.stream.receive_some()):
                    drained += len(chunk)
        await self.stream.aclose()


def _parts(data: bytes) -> list[memoryview]:
    view = memoryview(data)
    return [view[start : start + _SEND_PART] for start in range(0, len(view), _SEND_PART)]


def _with_problem_body(data: bytes, config: Config) -> bytes:
    """hypercorn's own error answers (a request h11 cannot parse: 400; a head over
    ``h11_max_incomplete_size``: 431; and so on) have no body; give them the problem+json
    every other refusal has. Any other data passes unchanged."""
    match = _EMPTY_ERROR.match(data)
    if match is None:
        return data
    status = int(match[1])
    if not _phrase(status):
        return data
    headers, body = _problem_head_and_body(_hypercorn_problem(status, config))
    head = [f"HTTP/1.1 {status} {_phrase(status)}".encode()]
    head += [name + b": " + value for name, value in headers]
    head += [b"content-length: %d" % len(body), b"connection: close"]
    return b"\r\n".join(head) + b"\r\n" + match[2] + b"\r\n" + body


def _hypercorn_problem(status: int, config: Config) -> Problem:
    if status == 400:
        return Problem(
            400,
            "The request is not valid HTTP/1.1.",
            code="malformed_request",
            hint="Check the request line, the headers and the body's framing.",
        )
    if status == 431:
        return Problem(
            431,
            f"The request's line and headers exceed {config.h11_max_incomplete_size} bytes.",
            code="headers_too_large",
            hint="Send fewer or shorter headers.",
        )
    return Problem(status, _phrase(status))
