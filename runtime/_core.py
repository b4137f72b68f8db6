"""The one HTTP client toward PiPhi Core, and what its failures mean.

One pooled ``httpx.AsyncClient`` per process with few connections. Its transport is
``H11Transport`` (h11 on trio streams, about a quarter of httpcore's CPU per request;
see its module); httpcore also rescans every queued request against every connection on
each pool event (docs/design.md, httpx). Callers keep at most ``connections`` requests in
flight; the outbox's fixed pool of senders does.

Every failure comes out as one ``CoreError`` subclass that says whether a retry can
help. The token lives only in the request headers: never in a message, ``repr``, log
line or error, and errors are raised ``from None`` so no chained httpx exception can
carry a request (and its headers) into a traceback.
"""

from __future__ import annotations

import email.utils
import hmac
import json
import math
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import h11
import httpx
import trio

from ._contract import (
    CONFIG_FETCH_PATH,
    CONTAINER_HEADER,
    DEFAULT_CORE_URL,
    EVENTS_PATH,
    TELEMETRY_PATH,
    TOKEN_HEADER,
)
from ._errors import (
    CoreAuthRejected,
    CoreError,
    CoreIdentityUnknown,
    CorePayloadTooLarge,
    CoreRejected,
    CoreRouteNotFound,
    CoreServerError,
    CoreTimeout,
    CoreUnavailable,
    CoreUnexpectedResponse,
)
from ._transport import H11Transport, Pipeline, PipelineBroken

__all__ = ["DEFAULT_CORE_URL", "CoreClient", "CoreLane"]


def _normalise_base_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if url.endswith("/api/v2"):
        url = url[: -len("/api/v2")]
    parsed = httpx.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(
            f"the Core base URL must be an http(s) URL with a host, got {url!r} "
            "(set PIPHI_CORE_BASE_URL, e.g. http://127.0.0.1:31419)"
        )
    return url


def header_value(value: str | None) -> str | None:
    """``value`` stripped, or None if empty or not a legal HTTP header value."""
    if value is None:
        return None
    value = value.strip()
    if not value or any(ord(c) < 0x20 or ord(c) == 0x7F or ord(c) > 0x7E for c in value):
        return None
    return value


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


class CoreClient:
    """Talks to PiPhi Core: telemetry, events and the config fetch, with auth headers.

    ``container_id`` and ``token`` may be unknown at first and learnt later from Core's
    requests (``set_auth``); ``auth_changed()`` lets a paused sender wait for that. Use it
    as an async context manager, or call ``aclose()``. ``transport`` swaps the network
    out in tests, as in httpx.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_CORE_URL,
        *,
        container_id: str | None = None,
        token: str | None = None,
        integration_id: str | None = None,
        timeout: float = 5.0,
        connections: int = 4,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if connections < 1:
            raise ValueError("connections must be >= 1")
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError("timeout must be a positive number of seconds")
        self.base_url = _normalise_base_url(base_url)
        parsed = httpx.URL(self.base_url)
        self._host_header = parsed.netloc  # host[:port], never user info
        self._prefix = parsed.raw_path.rstrip(b"/").decode()
        self.integration_id = integration_id or None
        self.connections = connections
        self.timeout = timeout
        self._container_id: str | None = None
        self._token: str | None = None
        self._headers: dict[str, str] = {}
        self._auth_version = 0
        self._auth_event = trio.Event()
        self._set(header_value(container_id), header_value(token))
        if transport is None and self.base_url.startswith("http://"):
            transport = H11Transport(connections)
        # Telemetry and events skip httpx's client layers when the transport allows it.
        self._fast = transport if isinstance(transport, H11Transport) else None
        self._host, self._port = parsed.host, parsed.port or 80
        self._timeouts = {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
            transport=transport,
            follow_redirects=False,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kwargs: Any) -> CoreClient:
        """A client configured from ``PIPHI_CORE_BASE_URL``, ``PIPHI_CONTAINER_ID`` and
        ``PIPHI_INTEGRATION_INTERNAL_TOKEN`` (docs/contract.md, Environment)."""
        from ._settings import Settings

        settings = Settings.from_env(env)
        return cls(
            settings.core_base_url,
            container_id=settings.container_id,
            token=settings.token,
            **kwargs,
        )

    def __repr__(self) -> str:
        token = "set" if self._token else "none"
        return f"<CoreClient {self.base_url} container_id={self._container_id!r} token={token}>"

    # -- identity ---------------------------------------------------------------------

    @property
    def container_id(self) -> str | None:
        return self._container_id

    @property
    def has_token(self) -> bool:
        return self._token is not None

    @property
    def auth_version(self) -> int:
        """Bumped on every change of container id or token."""
        return self._auth_version

    def token_matches(self, candidate: str | None) -> bool:
        """Constant-time comparison with the current token (False when either is unset)."""
        if self._token is None or not candidate:
            return False
        return hmac.compare_digest(self._token.encode(), candidate.encode())

    def set_auth(self, *, container_id: str | None = None, token: str | None = None) -> bool:
        """Adopt a container id and/or token (``None`` keeps the current one).

        Surrounding whitespace is stripped (an env file with CRLF endings leaves a ``\r``);
        a value that cannot be an HTTP header value is ignored. Returns whether anything
        changed; a change wakes every ``auth_changed()`` waiter.
        """
        new_container = header_value(container_id) or self._container_id
        new_token = header_value(token) or self._token
        if new_container == self._container_id and new_token == self._token:
            return False
        self._set(new_container, new_token)
        return True

    def _set(self, container_id: str | None, token: str | None) -> None:
        self._container_id, self._token = container_id, token
        headers = {"Content-Type": "application/json"}
        if container_id:
            headers[CONTAINER_HEADER] = container_id
        if token:
            headers[TOKEN_HEADER] = token
        self._headers = headers
        self._raw_headers = [(b"Host", self._host_header)] + [
            (k.encode(), v.encode()) for k, v in headers.items()
        ]
        # The lanes' requests, written once per auth change rather than framed per request
        # (the values passed header_value(): no CR, LF or other control character).
        lines = "".join(f"{k}: {v}\r\n" for k, v in [("Host", self._host_header), *headers.items()])
        self._heads = {
            path: f"POST {self._prefix}{path} HTTP/1.1\r\n{lines}Content-Length: ".encode()
            for path in (TELEMETRY_PATH, EVENTS_PATH)
        }
        self._auth_version += 1
        self._auth_event.set()
        self._auth_event = trio.Event()

    async def auth_changed(self) -> None:
        """Wait until the container id or token next changes."""
        await self._auth_event.wait()

    # -- calls ------------------------------------------------------------------------

    async def post_telemetry(self, body: bytes) -> None:
        """POST one encoded telemetry payload; returns on any 2xx."""
        await self._post(TELEMETRY_PATH, body)

    async def post_event(self, body: bytes) -> None:
        """POST one encoded event; returns on any 2xx."""
        await self._post(EVENTS_PATH, body)

    async def _post(self, path: str, body: bytes) -> None:
        fast = self._fast
        if fast is None:
            await self._request("POST", path, content=body)
            return
        if self._container_id is None:
            raise CoreIdentityUnknown(f"no container id known yet for POST {path}")
        # h11 builds the request inside the try: a bad header must surface as a CoreError.
        try:
            head = h11.Request(
                method="POST",
                target=self._prefix + path,
                headers=[*self._raw_headers, (b"Content-Length", str(len(body)).encode())],
            )
            status, headers, content = await fast.exchange(
                self._host, self._port, head, body, self._timeouts
            )
        except _SEND_FAILURES as exc:
            raise _send_error("POST", path, exc) from None
        if not 200 <= status < 300:
            response = httpx.Response(status, headers=headers, content=content)
            raise _status_error("POST", path, response, self._token)

    def lane(self) -> CoreLane:
        """A sender's own way to Core (see ``CoreLane``); use as an async context manager."""
        return CoreLane(self)

    async def fetch_configs(self) -> list[dict[str, Any]]:
        """Core's config rows for this container (the start-up rehydration source)."""
        if self._container_id is None:
            raise CoreIdentityUnknown("no container id known, so Core's configs cannot be fetched")
        response = await self._request(
            "GET", CONFIG_FETCH_PATH, params={"container_id": self._container_id}
        )
        try:
            rows = json.loads(response.content)
        except ValueError:
            rows = None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise CoreUnexpectedResponse(
                f"Core's config fetch answered {response.status_code} without a JSON list "
                "of config rows",
                status=response.status_code,
            )
        return rows

    async def _request(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        params: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        if self._container_id is None:
            raise CoreIdentityUnknown(f"no container id known yet for {method} {path}")
        try:
            response = await self._http.request(
                method, path, content=content, params=params, headers=self._headers
            )
        except _SEND_FAILURES as exc:
            raise _send_error(method, path, exc) from None
        status = response.status_code
        if 200 <= status < 300:
            return response
        raise _status_error(method, path, response, self._token)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(1.0):
            await self.aclose()


class CoreLane:
    """One sender's way to Core for telemetry and events: ``post()`` a batch, in order.

    Over plain ``http://`` with ``H11Transport`` (the default) the lane has a keep-alive
    connection of its own (``_transport.Pipeline``): each batch is written at once from
    request heads built once per auth change, and Core's small 2xx
    answers are parsed without h11 (anything unusual still goes through h11). Otherwise
    (https, a custom transport) each item is one ``CoreClient`` request, as before.

    Time: ``guard`` is a cancel scope the caller holds open for many batches; ``post()``
    pushes its deadline to ``timeout`` from now only when less than three quarters of that
    is left, so a steady stream of requests costs no deadline bookkeeping per request,
    and an exchange that gets no answer for between 0.75 and 1 ``timeout`` is cancelled.
    The caller then reads ``timed_out()`` for what had been answered.
    """

    def __init__(self, client: CoreClient) -> None:
        self._client = client
        fast = client._fast
        self._pipeline = None if fast is None else Pipeline(client._host, client._port)
        if self._pipeline is not None:
            self._pipeline.progress = self.arm
        self.guard: trio.CancelScope | None = None
        self._timeout = client.timeout
        self._rearm = 0.75 * client.timeout
        self._paths: list[str] = []
        self._done: list[CoreError | None] = []

    @property
    def pipelined(self) -> bool:
        """Whether a batch of several items goes out in one write (else one by one)."""
        return self._pipeline is not None

    def arm(self) -> None:
        """Give the exchange in progress ``timeout`` from now, if the guard's deadline is
        nearer than three quarters of that."""
        guard = self.guard
        if guard is not None:
            now = trio.current_time()
            deadline = guard.deadline
            if deadline - now < self._rearm or deadline == math.inf:
                guard.deadline = now + self._timeout

    def disarm(self) -> None:
        """No exchange in progress for a while (a retry's wait): no deadline."""
        if self.guard is not None:
            self.guard.deadline = math.inf

    async def post(self, items: Sequence[tuple[bool, bytes]]) -> list[CoreError | None]:
        """POST each ``(is_event, body)`` in order. One result per answered item (None
        for a 2xx); when the connection fails, the first unanswered item gets the error
        and the list ends there (the items after it were not answered: send them again)."""
        client = self._client
        self._paths = paths = [EVENTS_PATH if event else TELEMETRY_PATH for event, _ in items]
        if client._container_id is None:
            return [CoreIdentityUnknown(f"no container id known yet for POST {paths[0]}")]
        self.arm()
        pipeline = self._pipeline
        if pipeline is None:
            return await self._one_by_one(items)
        heads = client._heads
        chunks: list[bytes] = []
        for (_, body), path in zip(items, paths, strict=True):
            chunks += (heads[path], b"%d\r\n\r\n" % len(body), body)
        try:
            answers = await pipeline.exchange(chunks, len(items))
        except PipelineBroken as broken:
            answers = broken.answers
            results = self._results(answers)
            results.append(_send_error("POST", paths[len(answers)], broken.error))
            return results
        return self._results(answers)

    def _results(
        self, answers: list[tuple[int, list[tuple[bytes, bytes]], bytes]]
    ) -> list[CoreError | None]:
        results: list[CoreError | None] = []
        token = self._client._token
        for (status, headers, content), path in zip(answers, self._paths, strict=False):
            if 200 <= status < 300:
                results.append(None)
            else:
                response = httpx.Response(status, headers=headers, content=content)
                results.append(_status_error("POST", path, response, token))
        return results

    async def _one_by_one(self, items: Sequence[tuple[bool, bytes]]) -> list[CoreError | None]:
        results: list[CoreError | None] = []
        self._done = results  # what timed_out() reports as answered
        for (_, body), path in zip(items, self._paths, strict=True):
            try:
                await self._client._post(path, body)
            except CoreError as err:
                results.append(err)
                break
            results.append(None)
            self.arm()
        return results

    def timed_out(self) -> list[CoreError | None]:
        """After ``guard`` fired: the results of what was answered, then a timeout."""
        pipeline = self._pipeline
        results = self._results(pipeline.answers) if pipeline is not None else list(self._done)
        path = self._paths[len(results)] if len(results) < len(self._paths) else TELEMETRY_PATH
        results.append(CoreTimeout(f"POST {path}: no answer from Core within {self._timeout:g} s"))
        return results

    async def aclose(self) -> None:
        if self._pipeline is not None:
            await self._pipeline.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


_SEND_FAILURES = (httpx.TransportError, OSError, h11.LocalProtocolError)


def _send_error(method: str, path: str, exc: Exception) -> CoreError:
    """What a request that got no answer means: Core slow, Core unreachable, or a request
    that could not be written (whose message would quote the offending header)."""
    if isinstance(exc, httpx.TimeoutException):
        return CoreTimeout(f"{method} {path}: {type(exc).__name__}")
    if isinstance(exc, h11.LocalProtocolError):
        return CoreUnexpectedResponse(f"{method} {path} could not be written as HTTP")
    return CoreUnavailable(f"{method} {path}: {type(exc).__name__}: {exc}")


def _status_error(method: str, path: str, response: httpx.Response, token: str | None) -> CoreError:
    status = response.status_code
    where = f"{method} {path} answered {status}"
    if status in (401, 403):
        return CoreAuthRejected(f"{where}: Core refused the runtime's credentials", status=status)
    if status == 404:
        return CoreRouteNotFound(f"{where}: route not found on this Core", status=status)
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    if status in (408, 429) or status >= 500:  # 408: Core gave up waiting for the request
        return CoreServerError(where, status=status, retry_after=retry_after)
    if status == 413:  # terminal: the same body will never fit
        return CorePayloadTooLarge(f"{where}: payload too large", status=status)
    if 400 <= status < 500:
        return CoreRejected(f"{where}: {_reason(response, token)}", status=status)
    return CoreUnexpectedResponse(f"{where}, which the runtime does not follow", status=status)


def _reason(response: httpx.Response, token: str | None) -> str:
    """A short, token-free account of why Core refused a payload."""
    text = response.text
    if token:
        text = text.replace(token, "[redacted]")
    text = text[:200].strip()
    return text or response.reason_phrase or "no reason given"
