"""Route latency (/health, /diagnostics, /metrics, /status/data) while N devices poll at 1 Hz.

Three processes: the fast Core sink (bench/core_sink.py), the runtime under test
(``piphi-runtime serve examples.simulated_home:integration`` on 127.0.0.1, delivering
every reading to the sink), and this driver, which configures the devices through
``/config/sync``, lets them settle, then times sequential GETs over one keep-alive
connection. The same run measures the runtime with 0 devices as the baseline, so the
ratio shows what the fleet costs the routes.

Usage: python bench/routes.py [--quick] [--sizes 1000 5000] [--requests 2000] [--repeat 3]
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
from typing import Any

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextmanager
def child(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        args,
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def time_gets(http: httpx.Client, path: str, count: int) -> list[float]:
    latencies = []
    for _ in range(count):
        start = time.perf_counter()
        response = http.get(path)
        latencies.append((time.perf_counter() - start) * 1000)
        response.raise_for_status()
    return latencies


#: The routes timed, with how many of ``--requests`` each gets (the heavy ones fewer).
ROUTES = (
    ("health", "/health", 1.0),
    ("diagnostics", "/diagnostics?limit={page}", 0.1),
    ("metrics", "/metrics", 0.1),
    ("status_data", "/status/data", 0.1),
)


def one_run(devices: int, requests: int, settle: float) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory() as state,
        child(
            [sys.executable, "bench/core_sink.py", "--exit-on-stdin-eof"], dict(os.environ)
        ) as sink,
    ):
        assert sink.stdout is not None
        ports = json.loads(sink.stdout.readline())
        env = {
            **os.environ,
            "PIPHI_CORE_BASE_URL": f"http://127.0.0.1:{ports['data_port']}",
            "PIPHI_STATE_DIR": state,
            "PIPHI_CONFIG_SNAPSHOT_PATH": os.path.join(state, "none.json"),
            "PIPHI_LOG_LEVEL": "WARNING",
        }
        args = [
            sys.executable,
            "-m",
            "runtime",
            "serve",
            "examples.simulated_home:integration",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ]
        with child(args, env) as runtime:
            assert runtime.stdout is not None
            url = runtime.stdout.readline().split(" on ")[-1].split()[0]
            headers = {"X-Container-Id": "bench", "X-PiPhi-Integration-Token": "bench-token"}
            with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
                kinds = ["thermostat", "plug", "air_quality"]
                configs = [{"id": f"dev-{i}", "device_type": kinds[i % 3]} for i in range(devices)]
                http.post("/config/sync", json={"generation": 1, "configs": configs})
                time.sleep(settle)
                row: dict[str, Any] = {"devices": devices}
                page = min(1000, max(1, devices))  # every record, up to a full page
                for name, path, share in ROUTES:
                    path = path.format(page=page)
                    if http.get(path).status_code == 404:
                        continue  # a route this version does not serve
                    latencies = time_gets(http, path, max(50, int(requests * share)))
                    row[f"{name}_p50_ms"] = statistics.median(latencies)
                    row[f"{name}_p99_ms"] = percentile(latencies, 0.99)
                delivery = http.get("/diagnostics").json()["diagnostics"]["delivery"]
    row["delivered"] = delivery["delivered"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short run (under a minute)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.quick:
        repeat, requests, settle, sizes = 1, 400, 5.0, [0, 1000]
    else:
        repeat, requests, settle, sizes = args.repeat, args.requests, 10.0, [0, *args.sizes]
    rows = []
    for n in range(repeat):
        for devices in sizes:
            row = one_run(devices, requests, settle)
            rows.append(row)
            figures = ", ".join(
                f"{name} p50 {row[f'{name}_p50_ms']:.1f} p99 {row[f'{name}_p99_ms']:.1f} ms"
                for name, _, _ in ROUTES
                if f"{name}_p99_ms" in row
            )
            print(f"run {n + 1} devices={devices}: {figures}; delivered {row['delivered']}")

    def med(rs: list[dict[str, Any]], key: str) -> float:
        values = [r[key] for r in rs if key in r]
        return statistics.median(values) if values else float("nan")

    names = [name for name, _, _ in ROUTES if any(f"{name}_p99_ms" in r for r in rows)]
    print("\n| devices | " + " | ".join(f"{n} p50 / p99 ms" for n in names) + " |")
    print("|---|" + "---|" * len(names))
    by_size = {size: [r for r in rows if r["devices"] == size] for size in sizes}
    for size, rs in by_size.items():
        cells = [f"{med(rs, f'{n}_p50_ms'):.1f} / {med(rs, f'{n}_p99_ms'):.1f}" for n in names]
        print(f"| {size} | " + " | ".join(cells) + " |")
    idle, top = by_size[0], by_size[sizes[-1]]
    ratio = med(top, "health_p99_ms") / med(idle, "health_p99_ms")
    print(f"\n/health p99 with {sizes[-1]} devices / with none: {ratio:.2f}")
    result = " ".join(
        f"{n}_p99_ms_{size}={med(by_size[size], f'{n}_p99_ms'):.1f}"
        for size in sizes[1:]
        for n in names
    )
    print(f"RESULT {result}")


if __name__ == "__main__":
    main()
