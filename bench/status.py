"""The status page's data routes at 1,000 and 5,000 devices, in process: CPU per request.

The runtime (``open_runtime`` with ``examples.simulated_home``) runs in this process and the
requests go through the Quart test client straight into the app (no sockets: what is
measured is the route with Quart's request handling, validation and encoding, not
hypercorn's HTTP). The Core is ``bench/core_sink.py`` in a process of its own, as in
bench/routes.py. Per fleet size, two phases:

- **idle**: the devices poll once an hour, so the process does nothing but the requests;
  CPU per request (``time.process_time``) is the route's own cost. The health history's
  look at the whole fleet (``_web/history.py``) is timed the same way.
- **live**: the devices poll at 1 Hz and deliver every reading; the wall-clock latency of
  ``/status/data`` while they do, one request every 100 ms.

Usage: python bench/status.py [--quick] [--devices 1000 5000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.simulated_home import integration
from runtime._web import RUNTIME_KEY
from runtime._web.history import HealthHistory
from runtime.lowlevel import open_runtime

ROOT = Path(__file__).resolve().parent.parent
HEADERS = {"X-Container-Id": "bench", "X-PiPhi-Integration-Token": "bench-token"}
KINDS = ["thermostat", "plug", "air_quality"]


@contextmanager
def core_sink() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "bench/core_sink.py", "--exit-on-stdin-eof"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ports = json.loads(proc.stdout.readline())
        yield f"http://127.0.0.1:{ports['data_port']}"
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def cpu_per_request(client: Any, path: str, count: int) -> list[float]:
    """CPU milliseconds of each of ``count`` sequential requests."""
    costs = []
    for _ in range(count):
        start = time.process_time()
        response = await client.get(path, headers=HEADERS)
        await response.get_data()
        costs.append((time.process_time() - start) * 1000)
        assert response.status_code == 200, (path, response.status_code)
    return costs


async def wall_per_request(client: Any, path: str, count: int, gap: float) -> list[float]:
    latencies = []
    for _ in range(count):
        await trio.sleep(gap)
        start = time.perf_counter()
        response = await client.get(path, headers=HEADERS)
        await response.get_data()
        latencies.append((time.perf_counter() - start) * 1000)
    return latencies


PATHS = {
    "data": "/status/data",
    "data_limit_500": "/status/data?limit=500",
    "search": "/status/data?q=dev-12",
    "state_filter": "/status/data?state=unavailable",
    "device": "/status/device/dev-7",
}


def fleet(devices: int, interval: float) -> list[dict[str, Any]]:
    return [
        {"id": f"dev-{i}", "device_type": KINDS[i % 3], "poll_interval_seconds": interval}
        for i in range(devices)
    ]


async def measure(devices: int, requests: int, settle: float, core_url: str) -> dict[str, Any]:
    row: dict[str, Any] = {"devices": devices}
    for phase, interval in (("idle", 3600.0), ("live", 1.0)):
        with tempfile.TemporaryDirectory() as state:
            env = {
                "PIPHI_CORE_BASE_URL": core_url,
                "PIPHI_CONTAINER_ID": "bench",
                "PIPHI_INTEGRATION_INTERNAL_TOKEN": "bench-token",
                "PIPHI_STATE_DIR": state,
                "PIPHI_CONFIG_SNAPSHOT_PATH": os.path.join(state, "none.json"),
            }
            app = integration.app()
            async with open_runtime(integration, env=env) as rt:
                app.extensions[RUNTIME_KEY] = rt
                async with app.test_app() as test_app:
                    client = test_app.test_client()
                    body = {"generation": 1, "configs": fleet(devices, interval)}
                    answer = await client.post("/config/sync", json=body, headers=HEADERS)
                    assert answer.status_code == 200
                    await trio.sleep(settle)
                    if phase == "idle":
                        for name, path in PATHS.items():
                            costs = await cpu_per_request(client, path, requests)
                            row[f"{name}_cpu_p50_ms"] = statistics.median(costs)
                            row[f"{name}_cpu_p99_ms"] = percentile(costs, 0.99)
                        row.update(await history_cost(rt.actors))
                    else:
                        row.update(await live(client, requests))
    return row


async def live(client: Any, requests: int) -> dict[str, float]:
    """Latency of /status/data beside /diagnostics (the same page of 100 actors) while the
    fleet polls, and the process's CPU over the window (the fleet's load included)."""
    figures: dict[str, float] = {}
    started, cpu = time.perf_counter(), time.process_time()
    for name, path in (("data", PATHS["data"]), ("diagnostics", "/diagnostics")):
        wall = await wall_per_request(client, path, requests, 0.1)
        figures[f"live_{name}_p50_ms"] = statistics.median(wall)
        figures[f"live_{name}_p99_ms"] = percentile(wall, 0.99)
    figures["live_cpu_pct"] = 100 * (time.process_time() - cpu) / (time.perf_counter() - started)
    return figures


async def history_cost(actors: Any) -> dict[str, float]:
    history = HealthHistory()
    start = time.process_time()
    await history.sample(actors)
    first = (time.process_time() - start) * 1000
    costs = []
    for _ in range(20):
        start = time.process_time()
        await history.sample(actors)
        costs.append((time.process_time() - start) * 1000)
    return {"history_first_ms": first, "history_sample_ms": statistics.median(costs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (under a minute)")
    parser.add_argument("--devices", type=int, nargs="+", default=[1000, 5000])
    args = parser.parse_args()
    requests, settle = (50, 3.0) if args.quick else (300, 8.0)
    rows = []
    with core_sink() as core_url:
        for devices in args.devices:
            row = trio.run(measure, devices, requests, settle, core_url)
            rows.append(row)
            print(json.dumps({k: round(v, 3) for k, v in row.items()}), flush=True)
    print("\n| devices | request | CPU p50 ms | CPU p99 ms |")
    print("|---|---|---|---|")
    for row in rows:
        for name, path in PATHS.items():
            print(
                f"| {row['devices']:,} | `{path}` | {row[f'{name}_cpu_p50_ms']:.2f} "
                f"| {row[f'{name}_cpu_p99_ms']:.2f} |"
            )
    print(
        "\n| devices | history: first look ms | each look after ms | live /status/data p50 "
        "ms | p99 ms | live /diagnostics p50 ms | p99 ms | process CPU % |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['devices']:,} | {row['history_first_ms']:.1f} "
            f"| {row['history_sample_ms']:.2f} | {row['live_data_p50_ms']:.1f} "
            f"| {row['live_data_p99_ms']:.1f} | {row['live_diagnostics_p50_ms']:.1f} "
            f"| {row['live_diagnostics_p99_ms']:.1f} | {row['live_cpu_pct']:.0f} |"
        )
    print(
        "RESULT "
        + " ".join(
            f"data_cpu_p50_ms_{r['devices']}={r['data_cpu_p50_ms']:.2f} "
            f"live_data_p99_ms_{r['devices']}={r['live_data_p99_ms']:.2f}"
            for r in rows
        )
    )


if __name__ == "__main__":
    main()
