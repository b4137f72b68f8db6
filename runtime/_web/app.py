"""The PiPhi route contract as a Quart-Trio app: ``build_app(integration)``.

Blueprints by concern (``health``, ``config``, ``commands``, ``devices``, ``describe``)
validate with quart-schema from the contract's models, so ``/openapi.json`` is generated
from what the routes really accept and answer. One set of error handlers turns every
refusal (a ``Problem``, a validation error, an HTTP error) into RFC 9457 problem+json
with snake_case field paths.

``piphi-runtime serve`` opens the runtime in its own root nursery and serves the app
beside it, so a runtime failure ends the process (docs/design.md, Lifetimes). Under
``hypercorn --worker-class trio module:app`` the app opens the runtime itself in
``before_serving``; a failure is then recorded, ``/health`` answers 503, and the process
is sent SIGTERM rather than left answering 200s.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from pydantic import ValidationError
from quart import Response, request
from quart_schema import (
    APIKeySecurityScheme,
    Info,
    PydanticDumpOptions,
    QuartSchema,
    RequestSchemaValidationError,
)
from quart_schema.validation import QuerystringValidationError
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from .._contract import CONTAINER_HEADER, PROBLEM_JSON, TOKEN_HEADER, Answer
from .._integration import Integration
from .._logs import configure as configure_logs
from .._logs import runtime_logger
from .._runtime import Runtime, open_runtime
from .._settings import Settings
from . import commands, config, describe, devices, health, metrics, status
from .bodies import MAX_SNAPSHOT_BODY, JsonRequest, body_limit
from .context import INTEGRATION_KEY, RUNTIME_KEY
from .problem import Problem, field_errors, problem_response

__all__ = ["build_app"]

log = runtime_logger("runtime.web")

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]
MakeResponse = Callable[[Any], Awaitable[Any]]
#: Routes that neither need nor teach credentials: liveness, the API's own description
#: and the status page with its assets (they carry no data).
OPEN_ROUTES = frozenset({"/health", "/openapi.json", "/docs", *status.PAGE_PATHS})
#: The code of a body that does not match its route's model, by blueprint.
_INVALID = {"config": "invalid_config", "commands": "invalid_command"}
#: Seconds a route waits for its request's body once it asks for it; then 408. The largest
#: body taken (16 MiB, a snapshot) at about 1 MB/s; Core sends from the same host or LAN.
#: Slow clients hold a connection no longer than this (docs/design.md, hypercorn).
BODY_TIMEOUT = 20


def build_app(integration: Integration, *, exit_on_failure: bool = False) -> QuartTrio:
    """The Quart-Trio app serving ``integration``: ``hypercorn --worker-class trio m:app``.

    ``exit_on_failure``: under hypercorn's CLI, end the process (SIGTERM to itself) if the
    runtime dies while serving; an opt-in, since it is the process owner's call."""
    app = QuartTrio(integration.id)
    app.request_class = JsonRequest
    app.config["MAX_CONTENT_LENGTH"] = MAX_SNAPSHOT_BODY  # the largest; per route in bodies.py
    app.config["BACKGROUND_TASK_SHUTDOWN_TIMEOUT"] = 0.5
    app.config["BODY_TIMEOUT"] = BODY_TIMEOUT
    app.extensions[INTEGRATION_KEY] = integration
    QuartSchema(
        app,
        info=Info(
            title=integration.name,
            version=integration.version,
            description=integration.description or f"The PiPhi routes of {integration.name}.",
        ),
        swagger_ui_path=None,
        redoc_ui_path=None,
        scalar_ui_path=None,
        security_schemes={
            "piphiToken": APIKeySecurityScheme(name=TOKEN_HEADER, in_="header"),
        },
        security=[{"piphiToken": []}],
        conversion_preference="pydantic",
        # mode="json": moments leave as ISO-8601 strings, not Quart's HTTP dates.
        pydantic_dump_options=PydanticDumpOptions(mode="json", by_alias=True),  # type: ignore[typeddict-unknown-key]
        openapi_provider_class=describe.ContractOpenAPI,
    )
    app.make_response = _answers_as_json(app.make_response)  # type: ignore[method-assign, assignment]
    for module in (health, config, commands, devices, describe, metrics, status):
        app.register_blueprint(module.blueprint)
    requests: Counter[tuple[str, str]] = Counter()
    app.extensions[metrics.REQUESTS_KEY] = requests

    @app.after_request
    async def count(response: Response) -> Response:
        rule = request.url_rule
        requests[(rule.rule if rule else "unmatched", str(response.status_code))] += 1
        return response

    app.before_request(_refuse_oversized)
    app.before_request(_authenticate)
    _install_errors(app)
    _install_lifecycle(app, integration, exit_on_failure)
    quart = _disconnect_after_send(app.asgi_app)
    app.asgi_app = _health_first(app, _token_first(app, quart), requests)  # type: ignore[method-assign, assignment]
    return app


def _answers_as_json(make_response: MakeResponse) -> MakeResponse:
    """Encode the contract's answers with pydantic's own JSON encoder, in one step.

    quart-schema would turn a model into a dict and hand that to Quart's JSON provider
    (sorted keys, ASCII escapes): about 20 us per record against 3 us, which at a
    thousand records (``/diagnostics``, ``/entities``) is most of the answer's cost."""

    async def make(result: Any) -> Any:
        value, rest = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
        if not isinstance(value, Answer):
            return await make_response(result)
        status = rest[0] if rest and isinstance(rest[0], int) else 200
        response = Response(
            value.model_dump_json(by_alias=True), status=status, content_type="application/json"
        )
        return await make_response((response, *rest[1:]))

    return make


async def _refuse_oversized() -> None:
    """A declared body larger than its route takes is refused before it is read."""
    limit = body_limit(request.path)
    if (request.content_length or 0) > limit:
        raise Problem(413, f"The body is larger than {limit} bytes.", code="body_too_large")


async def _authenticate() -> None:
    """Managed mode: every route but the open ones needs Core's token (compared in
    constant time). Adopted mode: only an applied snapshot teaches auth (``config.py``)."""
    from quart import current_app

    rt = current_app.extensions.get(RUNTIME_KEY)
    if not isinstance(rt, Runtime) or request.path in OPEN_ROUTES:
        return
    headers = request.headers
    token = presented_token(headers.get)
    if rt.managed and not rt.client.token_matches(token):
        raise _auth_required()
    rt.learn_auth(headers.get(CONTAINER_HEADER), token, from_snapshot=False)


def presented_token(header: Callable[[str], str | None]) -> str | None:
    """The integration token a request presents (``header`` looks a lower-case name up):
    its own header, else a bearer token, which Prometheus and most tools can send."""
    token = header(TOKEN_HEADER.lower())
    if token is None:
        authorization = header("authorization") or ""
        if authorization.startswith("Bearer "):
            token = authorization[7:]
    return token


def _auth_required() -> Problem:
    return Problem(
        401,
        "This runtime requires Core's integration token.",
        code="auth_required",
        hint=f"Send the {TOKEN_HEADER} header Core gave this runtime.",
        headers={"WWW-Authenticate": "PiPhi-Token"},
    )


def _install_errors(app: QuartTrio) -> None:
    @app.errorhandler(Problem)
    async def on_problem(problem: Problem) -> Response:
        return problem_response(problem)

    @app.errorhandler(RequestSchemaValidationError)
    async def on_invalid(exc: RequestSchemaValidationError) -> Response:
        error = exc.validation_error
        if isinstance(exc, QuerystringValidationError):
            status, code, what = 400, "bad_query_argument", "query"
            hint = "Fix or leave out the query arguments named in errors."
        else:
            body = await request.get_json()
            status, what = 422, "body"
            hint = "Fix the fields named in errors; /openapi.json has the schema."
            code = (
                _INVALID.get(request.blueprint or "", "invalid_request")
                if isinstance(body, dict)
                else "body_not_an_object"
            )
        errors = field_errors(error) if isinstance(error, ValidationError) else None
        return problem_response(
            Problem(
                status, f"The request's {what} is invalid.", code=code, hint=hint, errors=errors
            )
        )

    @app.errorhandler(ValidationError)
    async def on_model(exc: ValidationError) -> Response:
        return problem_response(
            Problem(
                422,
                "The request's body is invalid.",
                code="invalid_request",
                hint="Fix the fields named in errors; /openapi.json has the schema.",
                errors=field_errors(exc),
            )
        )

    @app.errorhandler(HTTPException)
    async def on_http(exc: HTTPException) -> Response:
        status = exc.code or 500
        problem = Problem(status, exc.description or exc.name)
        if status == 413:
            problem.detail = f"The body is larger than {body_limit(request.path)} bytes."
            problem.code = "body_too_large"
        allow = dict(exc.get_headers()).get("Allow")
        if allow:
            problem.headers["Allow"] = allow
        return problem_response(problem)

    @app.errorhandler(Exception)
    async def on_crash(exc: Exception) -> Response:
        log.error("unexpected error answering %s %s", request.method, request.path, exc_info=exc)
        return problem_response(
            Problem(500, "The runtime failed to answer; see its log.", code="internal_error")
        )


def _health_first(app: QuartTrio, asgi_app: ASGIApp, requests: Counter[tuple[str, str]]) -> ASGIApp:
    """Answer ``GET /health`` before Quart builds a request context (about 2 ms of CPU per
    request): liveness checks are the most frequent request and must stay fast while the
    event loop is busy with devices. Anything else, or a runtime not up, goes to Quart."""

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") == "http" and scope.get("path") == "/health":
            rt = app.extensions.get(RUNTIME_KEY)
            if scope.get("method") == "GET" and isinstance(rt, Runtime) and not rt.failure:
                body = health.health_answer(rt).model_dump_json(by_alias=True).encode()
                headers = [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                requests[("/health", "200")] += 1
                return
        await asgi_app(scope, receive, send)

    return asgi


def _token_first(app: QuartTrio, asgi_app: ASGIApp) -> ASGIApp:
    """Managed mode: refuse a request without Core's token before Quart, exactly as
    ``_authenticate`` would. A request context costs about 2 ms of CPU; 1,100 requests
    without a token at once held ``/health`` up for over 2 s, and refused here they cost
    little more than hypercorn's parsing. ``_authenticate`` still checks every request
    Quart sees (and learns the container id)."""
    problem = _auth_required()
    body = problem.document().model_dump_json(exclude_none=True).encode()
    headers = [
        (b"content-type", PROBLEM_JSON.encode()),
        (b"content-length", str(len(body)).encode()),
        *((name.lower().encode(), value.encode()) for name, value in problem.headers.items()),
    ]

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") == "http" and scope.get("path") not in OPEN_ROUTES:
            rt = app.extensions.get(RUNTIME_KEY)
            if isinstance(rt, Runtime) and rt.managed:
                sent = {k.decode("latin-1"): v for k, v in scope.get("headers", ())}

                def header(name: str) -> str | None:
                    value = sent.get(name)
                    return None if value is None else value.decode("latin-1")

                if not rt.client.token_matches(presented_token(header)):
                    await send({"type": "http.response.start", "status": 401, "headers": headers})
                    await send({"type": "http.response.body", "body": body})
                    return
        await asgi_app(scope, receive, send)

    return asgi


def _disconnect_after_send(asgi_app: ASGIApp) -> ASGIApp:
    """Hand Quart a request's ``http.disconnect`` only once no ``send`` is in progress.

    Quart-Trio runs a request as two tasks in one nursery, and cancels that nursery as soon
    as its receiving task sees ``http.disconnect``. hypercorn puts that message in the
    queue from *inside* the ``send`` of the response's last part, and then, still inside
    that ``send``, closes the connection (``Connection: close``, or a body left unread) or
    starts its keep-alive timer. The cancellation reached that work at its next
    checkpoint: the close never happened (the socket stayed open until the client or a
    read timeout ended it) and the timer task died, so idle keep-alive connections were
    never closed (docs/design.md, hypercorn). Holding the message until the ``send``
    returns lets hypercorn finish; a client that leaves while a handler works (no
    ``send`` in progress) still cancels the handler at once."""

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await asgi_app(scope, receive, send)
            return
        sending = 0
        idle = trio.Event()
        idle.set()

        async def tracked_send(message: Any) -> None:
            nonlocal sending, idle
            if not sending:
                idle = trio.Event()
            sending += 1
            try:
                await send(message)
            finally:
                sending -= 1
                if not sending:
                    idle.set()

        async def held_receive() -> Any:
            message = await receive()
            if message.get("type") == "http.disconnect":
                await idle.wait()
            return message

        await asgi_app(scope, held_receive, tracked_send)

    return asgi


def _install_lifecycle(app: QuartTrio, integration: Integration, exit_on_failure: bool) -> None:
    """Open the runtime when served by the hypercorn CLI (``serve`` opens it itself).

    If it dies while serving, ``/health`` answers 503 from then on; with
    ``exit_on_failure`` (the process owner's opt-in, given to ``build_app``) the process is
    also sent SIGTERM, so hypercorn stops and a supervisor restarts it."""
    owned: dict[str, Any] = {}

    @app.before_serving
    async def start_runtime() -> None:
        if RUNTIME_KEY in app.extensions:
            return
        settings = Settings.from_env()
        configure_logs(settings, force=False)  # only if nobody configured logging
        scope = trio.CancelScope()
        ready, done = trio.Event(), trio.Event()
        failed: list[BaseException] = []
        owned.update(scope=scope, done=done)

        async def run() -> None:
            try:
                with scope:
                    async with open_runtime(integration, settings=settings) as rt:
                        app.extensions[RUNTIME_KEY] = rt
                        ready.set()
                        await trio.sleep_forever()
            except Exception as exc:
                if not ready.is_set():
                    failed.append(exc)  # start-up failed: before_serving raises it below
                    return
                # The runtime died while serving: never keep answering 200s.
                log.critical("the runtime failed: %r", exc, exc_info=True)
                rt_ = app.extensions.get(RUNTIME_KEY)
                if isinstance(rt_, Runtime):
                    rt_.failure = repr(exc)
                if exit_on_failure:
                    os.kill(os.getpid(), signal.SIGTERM)
            finally:
                ready.set()
                done.set()

        # start_soon, not start(): the runtime opens nurseries of its own before it is
        # ready, and a task cannot be moved into app.nursery with those open.
        app.nursery.start_soon(run)
        await ready.wait()
        if failed:
            raise failed[0]

    @app.after_serving
    async def stop_runtime() -> None:
        scope, done = owned.get("scope"), owned.get("done")
        if scope is None or done is None:
            return
        scope.cancel()
        with trio.move_on_after(30):
            await done.wait()
        app.extensions.pop(RUNTIME_KEY, None)
