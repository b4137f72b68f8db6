"""The ``piphi-runtime`` command."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from functools import partial
from typing import Any, cast

import attrs
import trio

from ._actor import DeviceActor
from ._errors import InvalidActor
from ._logs import configure as configure_logs

__all__ = ["main"]


def _load(target: str, app_dir: str = ".") -> Any:
    """``module:attribute``, imported as hypercorn and uvicorn do: ``app_dir`` (the
    working directory unless ``--app-dir`` says otherwise) comes first on the path."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise InvalidActor(f"expected module:ClassName, got {target!r}")
    directory = os.path.abspath(app_dir)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidActor(
            f"cannot import {module_name!r} from {directory}: {exc}",
            hint="Run from the folder that holds it, or pass --app-dir <folder>.",
        ) from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise InvalidActor(f"{module_name!r} has no attribute {attr!r}") from None


def _check(target: str, app_dir: str = ".") -> str:
    """Describe an actor class as the runtime will run it; raises InvalidActor if it can't."""
    cls = _load(target, app_dir)
    if not (isinstance(cls, type) and issubclass(cls, DeviceActor)):
        raise InvalidActor(f"{target} is not a DeviceActor subclass")
    if cls.mode is None:
        raise InvalidActor(f"{target} overrides neither poll() nor run()")
    model = cls.config_model
    fields = ", ".join(
        f"{name}{'' if info.is_required() else '?'}" for name, info in model.model_fields.items()
    )
    interval = model.model_fields["poll_interval_seconds"].default or cls.poll_interval
    poll_timeout = "min(interval, 10)" if cls.poll_timeout is None else f"{cls.poll_timeout:g}"
    lines = [
        f"{target}: {cls.mode} actor",
        f"  config model  {model.__name__} ({fields})",
        f"  poll interval {interval:g} s unless the config sets poll_interval_seconds",
        f"  timeouts      poll {poll_timeout} s, setup {cls.setup_timeout:g} s, "
        f"command {cls.command_timeout:g} s, stop {cls.stop_timeout:g} s",
        f"  restarts      {cls.restart_policy}",
        f"  commands      {', '.join(sorted(cls.commands)) or '(none)'}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from . import __version__

    parser = argparse.ArgumentParser(prog="piphi-runtime", description="PiPhi device runtime.")
    parser.add_argument("--version", action="version", version=f"piphi-runtime {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="validate a DeviceActor class and describe it")
    check.add_argument("target", help="module:ClassName, e.g. actors.simulated:SimulatedPlug")
    check.add_argument("--app-dir", default=".", help="where to import it from (default: .)")
    serve = commands.add_parser(
        "serve", help="run an integration and serve its routes (PORT, PIPHI_* from the env)"
    )
    serve.add_argument(
        "target", help="module:integration, e.g. examples.simulated_home:integration"
    )
    serve.add_argument(
        "--host",
        default="0.0.0.0",
        help="address to bind (default 0.0.0.0: Core reaches the container from outside it, "
        "so every interface; 127.0.0.1 keeps the routes to this host)",
    )
    serve.add_argument("--port", type=int, default=None, help="port (default: $PORT, else 8000)")
    serve.add_argument("--app-dir", default=".", help="where to import it from (default: .)")
    serve.add_argument(
        "--durability",
        choices=["memory", "write_ahead"],
        default=None,
        help="memory: items reach the spool after waiting 1 s (a kill -9 loses about the "
        "last second); write_ahead: every item is committed before it is sent (a kill -9 "
        "loses at most the batch being committed). Default: $PIPHI_DURABILITY, else memory",
    )
    devcore = commands.add_parser("devcore", help="run a local PiPhi Core for development")
    devcore.add_argument("--host", default="127.0.0.1")
    devcore.add_argument("--port", type=int, default=31419, help="the port runtimes call")
    devcore.add_argument("--admin-port", type=int, default=31420, help="the admin API's port")
    devcore.add_argument("--db", default="devcore.db", help="SQLite file (default devcore.db)")
    devcore.add_argument("--token", default="dev-token", help="the integration token to require")
    devcore.add_argument("--container-id", default="dev-container")
    admin = commands.add_parser("core", help="talk to a running devcore's admin API")
    admin.add_argument("--admin", default="http://127.0.0.1:31420", help="its admin URL")
    admin.add_argument(
        "action",
        choices=["configs", "add", "remove", "push", "telemetry", "events", "stats", "trouble"],
    )
    admin.add_argument(
        "argument",
        nargs="?",
        help="add: config JSON; remove: id; push: "
        "runtime URL; telemetry/events: device id; trouble: none|refuse|503|429|slow|drop",
    )
    admin.add_argument("--seconds", type=float, default=None, help="trouble: how long")
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            print(_check(args.target, args.app_dir))
        elif args.command == "serve":
            return _serve(args.target, args.host, args.port, args.app_dir, args.durability)
        elif args.command == "devcore":
            return _devcore(args)
        elif args.command == "core":
            return _core_admin(args)
    except (InvalidActor, ValueError) as exc:
        print(f"piphi-runtime: {exc}", file=sys.stderr)
        return 2
    return 0


def _serve(
    target: str, host: str, port: int | None, app_dir: str = ".", durability: str | None = None
) -> int:
    from ._integration import Integration
    from ._serve import serve
    from ._settings import Durability, Settings

    integration = _load(target, app_dir)
    if not isinstance(integration, Integration):
        raise InvalidActor(f"{target} is not a runtime.Integration")
    settings = Settings.from_env()  # every variable checked before anything starts
    if durability is not None:  # argparse keeps it to the two choices
        settings = attrs.evolve(settings, durability=cast(Durability, durability))
    configure_logs(settings)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(
                partial(serve, integration, settings=settings, host=host, port=port)
            )
            print(f"serving {integration.id} on {' '.join(urls)}", flush=True)

    try:
        trio.run(main)
    except BaseException as exc:  # the runtime's core failed: say so and exit non-zero
        if isinstance(exc, KeyboardInterrupt):
            return 130
        logging.getLogger("runtime").critical("the runtime failed: %r", exc, exc_info=exc)
        return 1
    return 0


def _devcore(args: argparse.Namespace) -> int:
    from ._settings import Settings
    from .devcore import DevCore

    configure_logs(Settings.from_env())
    core = DevCore(args.db, container_id=args.container_id, token=args.token or None)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(core.serve, host=args.host, port=args.port, admin_port=args.admin_port)
            )
            print(f"devcore: runtimes call {core.data_url}; admin API {core.admin_url}", flush=True)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

    trio.run(main)
    return 0


def _core_admin(args: argparse.Namespace) -> int:
    import json

    import httpx

    action, argument = args.action, args.argument
    with httpx.Client(base_url=args.admin, timeout=60) as http:
        if action == "configs":
            response = http.get("/admin/configs")
        elif action == "add":
            response = http.post("/admin/configs", json=json.loads(argument or "{}"))
        elif action == "remove":
            response = http.delete(f"/admin/configs/{argument}")
        elif action == "push":
            response = http.post("/admin/push", params={"runtime": argument or ""})
        elif action in ("telemetry", "events"):
            response = http.get(f"/admin/{action}", params={"device_id": argument or ""})
        elif action == "stats":
            response = http.get("/admin/stats")
        else:
            body: dict[str, object] = {"mode": argument or "none"}
            if args.seconds:
                body["seconds"] = args.seconds
            response = http.post("/admin/trouble", json=body)
    print(json.dumps(response.json(), indent=2))
    return 0 if response.is_success else 1
