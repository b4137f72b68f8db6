"""The peer for bench/delivery.py: a runtime built with piphi-runtime-kit-python 0.10.1.

Not part of our runtime and not imported by it: bench/delivery.py runs this file with the
Python of a separate venv that holds the kit (``.bench/kit-venv``), under uvicorn, as a
subprocess. It is built the way the kit's README recommends, after
shared/bench/peer_piphi/peer_runtime.py:

- ``create_runtime_starter(...)``, a typed ``RuntimeConfig`` subclass validated with
  ``validate_typed_config(s)``;
- ``/config/sync``: ``sync_runtime_auth_from_fastapi_payload`` and
  ``starter.config_sync.apply_snapshot(...)``;
- ``/health`` and ``/diagnostics``: ``starter.health_response()`` and
  ``starter.diagnostics_response(...)`` with the active config ids;
- ``runtime_lifespan`` (one shared Core ``httpx.AsyncClient``, the kit's defaults);
- per reading, ``starter.state.publish`` and ``schedule_telemetry_delivery`` (a tracked
  task, 5 attempts with 0.5 s doubling back-off, the ``max_background_tasks`` cap of
  1000, the kit's default).

Each configured device gets one plain asyncio polling task at a fixed rate; ticks that
fall more than one interval behind are skipped and counted, never burst. Each reading
carries ``metrics.seq``, 1, 2, 3... per device_id, so the sink can count gaps.

Bench instrumentation, outside the kit's path: the bound port and package versions are
printed on stdout as one JSON line at start; then stdin takes one command per line, read
by a thread so it is answered even while the event loop is starved:

- ``counters``: print the counters as one JSON line;
- ``pause``: stop generating readings (deliveries already scheduled go on), then print
  the counters; the next ``/config/sync`` resumes generation;
- end of input: exit at once (the bench is done with us, or gone).

Usage: PIPHI_CORE_BASE_URL=http://127.0.0.1:PORT python bench/_kit_peer.py [--port 0]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import socket
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from piphi_runtime_kit_python import (
    BackgroundTaskLimitError,
    RuntimeConfig,
    RuntimeConfigSnapshot,
    create_runtime_starter,
    resolve_core_base_url,
    runtime_lifespan,
    schedule_telemetry_delivery,
    validate_typed_config,
    validate_typed_configs,
)
from piphi_runtime_kit_python.fastapi import sync_runtime_auth_from_fastapi_payload

KIT_VERSION = "0.10.1"


class SimDeviceConfig(RuntimeConfig):  # type: ignore[misc]
    poll_interval_seconds: float = 1.0
    alias: str | None = None


class SimSnapshot(RuntimeConfigSnapshot):  # type: ignore[misc]
    configs: list[SimDeviceConfig] = []  # noqa: RUF012 (a pydantic field)


starter = create_runtime_starter(
    integration_id="bench-kit-peer",
    integration_name="Bench peer (piphi-runtime-kit-python)",
    version=f"{KIT_VERSION}-bench",
    core_base_url=resolve_core_base_url("http://127.0.0.1:31419") or "http://127.0.0.1:31419",
)


class Counters:
    def __init__(self) -> None:
        self.generated = 0  # readings the simulated devices produced
        self.scheduled = 0  # handed to schedule_telemetry_delivery
        self.rejected = 0  # BackgroundTaskLimitError raised to us
        self.gave_up = 0  # on_error: gave up after the kit's retries
        self.skipped = 0  # on_skipped (no container id)
        self.late_ticks = 0  # poll ticks skipped because the loop fell behind
        self.generating = True


counters = Counters()
_seq: dict[str, int] = {}  # device_id -> last seq; never reused in this process
_loops: dict[str, tuple[str, asyncio.Task[None]]] = {}  # config id -> (fingerprint, task)


def counters_line() -> str:
    state = starter.runtime.process_state
    return json.dumps(
        {
            "generated": counters.generated,
            "scheduled": counters.scheduled,
            "rejected": counters.rejected,
            "gave_up": counters.gave_up,
            "skipped": counters.skipped,
            "late_ticks": counters.late_ticks,
            "pending": len(state.background_tasks),
            "loops": len(_loops),
        }
    )


def _on_error(_exc: Exception, _ctx: dict[str, Any]) -> None:
    counters.gave_up += 1


def _on_skipped(_reason: str, _ctx: dict[str, Any]) -> None:
    counters.skipped += 1


async def poll_device(entry_id: str, config: SimDeviceConfig) -> None:
    device_id = config.device_id or config.id
    config_id = config.config_id or config.id
    interval = max(0.001, float(config.poll_interval_seconds))
    rng = random.Random(device_id)
    temperature = 20.0 + 5 * rng.random()
    loop = asyncio.get_running_loop()
    next_tick = loop.time() + rng.random() * interval  # spread devices over the interval
    runtime = starter.runtime
    while True:
        delay = next_tick - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        next_tick += interval
        behind = loop.time() - next_tick
        if behind > interval:  # fell behind by more than one tick: skip, don't burst
            skipped = int(behind // interval)
            counters.late_ticks += skipped
            next_tick += skipped * interval
        if not counters.generating:
            continue
        temperature += rng.uniform(-0.1, 0.1)
        seq = _seq.get(device_id, 0) + 1
        _seq[device_id] = seq
        metrics: dict[str, Any] = {"temperature_c": round(temperature, 2), "seq": seq}
        counters.generated += 1
        starter.state.publish(entry_id, metrics, device_id=device_id)
        try:
            schedule_telemetry_delivery(
                process_state=runtime.process_state,
                telemetry_client=starter.telemetry_client,
                auth_context=runtime.auth,
                config_id=config_id,
                device_id=device_id,
                metrics=metrics,
                units={"temperature_c": "C"},
                timestamp=dt.datetime.now(dt.UTC).isoformat(),
                on_error=_on_error,
                on_skipped=_on_skipped,
            )
            counters.scheduled += 1
        except BackgroundTaskLimitError:
            counters.rejected += 1


async def apply_config(config: RuntimeConfig) -> None:
    typed = validate_typed_config(config, SimDeviceConfig)
    fingerprint = typed.model_dump_json()
    current = _loops.get(typed.id)
    if current is not None and current[0] == fingerprint and not current[1].done():
        return
    if current is not None:
        current[1].cancel()
    starter.registry.set(
        typed.id,
        {
            "device_id": typed.device_id or typed.id,
            "config_id": typed.config_id or typed.id,
            "container_id": typed.container_id,
            "poll_interval_seconds": typed.poll_interval_seconds,
        },
    )
    task = asyncio.create_task(poll_device(typed.id, typed), name=f"poll:{typed.id}")
    _loops[typed.id] = (fingerprint, task)


async def remove_config(config_id: str) -> bool:
    current = _loops.pop(config_id, None)
    if current is not None:
        current[1].cancel()
    return starter.registry.remove(config_id) is not None


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    async def stop_loops(_ctx: Any) -> None:
        for _fingerprint, task in _loops.values():
            task.cancel()
        _loops.clear()

    async with runtime_lifespan(
        starter.runtime, on_shutdown=stop_loops, background_task_grace_period_seconds=1.0
    ):
        yield


app = FastAPI(title="bench-kit-peer", lifespan=lifespan)


@app.get("/health")
async def health() -> Any:
    return starter.health_response()


@app.get("/diagnostics")
async def diagnostics() -> Any:
    # The kit's diagnostics as its README shows them, with the active config ids (the
    # kit's default) and the loop count, as a runtime would report them.
    extra = {"active_config_ids": starter.registry.ids(), "running_loops": len(_loops)}
    return starter.diagnostics_response(diagnostics=extra)


@app.post("/config/sync")
async def config_sync(payload: SimSnapshot, request: Request) -> Any:
    sync_runtime_auth_from_fastapi_payload(starter.runtime, request, payload)
    payload.configs = validate_typed_configs(payload.configs, SimDeviceConfig)
    counters.generating = True
    return await starter.config_sync.apply_snapshot(
        snapshot=payload,
        active_config_ids=starter.registry.ids(),
        apply_config=apply_config,
        remove_config=remove_config,
        get_active_config_ids=starter.registry.ids,
    )


def control() -> None:
    """Answer the bench's commands on stdin; exit the process when stdin closes."""
    for line in sys.stdin:
        command = line.strip()
        if command == "pause":
            counters.generating = False
        if command in ("pause", "counters"):
            print(counters_line(), flush=True)
    os._exit(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    packages = ("piphi-runtime-kit-python", "fastapi", "uvicorn", "httpx", "httpcore", "anyio")
    line = {
        "port": sock.getsockname()[1],
        "pid": os.getpid(),
        "versions": {name: version(name) for name in packages},
    }
    print(json.dumps(line), flush=True)
    threading.Thread(target=control, name="bench-control", daemon=True).start()
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
