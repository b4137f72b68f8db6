"""``piphi-runtime serve``: the runtime owns the root nursery and hypercorn is one child.

This is the shape that makes failures visible (docs/design.md, Lifetimes): an error
in the runtime's core leaves the root nursery and ends the process non-zero, instead of
being logged by a lifespan handler while the server keeps answering 200s.

SIGTERM or SIGINT: hypercorn stops accepting and drains requests in flight, then the
actors stop (teardown), the outbox writes what is undelivered to the spool and the
client closes, each bounded, so the process exits within the grace period.

hypercorn serves behind the runtime's own accept gate (``_web/server.py``): a connection
cap below the file limit, 503 past it (``/health`` still answers), and a restart on the
same sockets if the server fails.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from typing import Any

import attrs
import trio
from hypercorn.config import Config

from . import _collector as collector
from ._integration import Integration
from ._logs import runtime_logger
from ._runtime import open_runtime
from ._settings import Durability, Settings
from ._web import RUNTIME_KEY
from ._web.server import ConnectionLimits, serve_supervised

__all__ = ["hypercorn_config", "serve"]

log = runtime_logger("runtime.serve")


#: Seconds an idle connection is kept open, and the most a request's line and headers may
#: take to arrive (hypercorn's idle timer runs until a request's head is complete).
KEEP_ALIVE_TIMEOUT = 5


def hypercorn_config(bind: str, *, graceful_timeout: float, quiet: bool = False) -> Config:
    """Hypercorn settings for a Quart-Trio app: no access log, no read timeout, and the
    keep-alive timer for idle connections and slow request heads.

    hypercorn's ``read_timeout`` bounds every read, also while a handler runs: it cut
    every answer slower than itself (a 7 s refresh, an 8 s command). The keep-alive timer
    closes idle connections once the app layer ``_disconnect_after_send`` lets it run;
    bodies are bounded by the app's ``BODY_TIMEOUT`` and responses by the server's send
    timeout (docs/design.md, hypercorn)."""
    config = Config()
    config.bind = [bind]
    config.accesslog = None
    # A logger, not a target: hypercorn then adds no handler of its own (with its own
    # format and no redaction), and its lines reach the process's handlers.
    config.errorlog = runtime_logger("hypercorn.error")
    config.read_timeout = None
    config.keep_alive_timeout = KEEP_ALIVE_TIMEOUT
    # A burst of connections waits in the kernel, not dropped (a dropped SYN is retried
    # after a second), while the accept loop sorts them: it costs no descriptor.
    config.backlog = 1024
    config.graceful_timeout = graceful_timeout
    if quiet:
        config.errorlog = None
    return config


async def _stop_on_signal(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("%s received: shutting down", signal.Signals(signum).name)
            stop.set()
            return


async def serve(
    integration: Integration,
    *,
    settings: Settings | None = None,
    env: Mapping[str, str] | None = None,
    host: str = "0.0.0.0",  # Core reaches the container from outside it
    port: int | None = None,
    durability: Durability | None = None,
    limits: ConnectionLimits | None = None,
    tune_collector: bool = True,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``integration`` and serve its routes until SIGTERM/SIGINT: the process owner.

    ``settings`` default to ``Settings.from_env(env)``. ``durability`` (``memory`` or
    ``write_ahead``) overrides ``PIPHI_DURABILITY``; see README, "Durability windows".
    ``limits``: how many connections at once and how long a client may stall; by
    default half of this process's file limit (``ConnectionLimits.for_file_limit``).
    ``tune_collector``: tune CPython's garbage collector for many idle actors while it
    serves (``_collector``); pass False to leave the process's collector alone.
    """
    if settings is None:
        settings = Settings.from_env(env)
    if durability is not None:
        settings = attrs.evolve(settings, durability=durability)
    if port is None:
        port = 8000 if settings.port is None else settings.port
    config = hypercorn_config(f"{host}:{port}", graceful_timeout=3.0)
    app = integration.app()
    stop = trio.Event()
    reconcile = collector.held if tune_collector else nullcontext
    with collector.tuned() if tune_collector else nullcontext():
        await _serve_runtime(
            integration, app, config, settings, reconcile, limits, stop, task_status
        )


async def _serve_runtime(
    integration: Integration,
    app: Any,
    config: Config,
    settings: Settings,
    reconcile: Callable[[], AbstractContextManager[None]],
    limits: ConnectionLimits | None,
    stop: trio.Event,
    task_status: trio.TaskStatus[list[str]],
) -> None:
    async with open_runtime(integration, settings=settings, around_reconcile=reconcile) as runtime:
        app.extensions[RUNTIME_KEY] = runtime
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, stop)
            urls = await nursery.start(
                partial(
                    serve_supervised,
                    app,
                    config,
                    limits=limits or ConnectionLimits.for_file_limit(),
                    shutdown_trigger=stop.wait,
                )
            )
            log.info(
                "serving %s on %s (durability %s)",
                integration.id,
                ", ".join(urls),
                settings.durability,
            )
            task_status.started(urls)
            await stop.wait()
            # hypercorn returns from serve() once it has drained; the signal task is done.
        app.extensions.pop(RUNTIME_KEY, None)
