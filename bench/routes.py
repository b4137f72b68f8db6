"""/health, /diagnostics and /status/data latency while N simulated devices poll at 1 Hz.

Three processes: the fast Core sink (bench/core_sink.py), the runtime under test
(``piphi-runtime serve examples.simulated_home:integration`` on 127.0.0.1, delivering
every reading to the sink), and this driver, which configures the devices through
``/config/sync``, lets them settle, then times sequential GETs over one keep-alive
connection. The same run measures the runtime with 0 devices as the baseline, so the
ratio shows what the fleet costs the routes.

Usage: python bench/routes.py [--quick] [--devices 1000] [--requests 2000]
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
            "-c",
            "import sys; from runtime._cli import main; sys.exit(main())",
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
                health = time_gets(http, "/health", requests)
                # Every actor's record, as before /diagnostics was paged (default 100).
                everything = f"/diagnostics?limit={min(1000, max(1, devices))}"
                diagnostics = time_gets(http, everything, max(50, requests // 10))
                status = time_gets(http, "/status/data", max(50, requests // 10))
                delivery = http.get("/diagnostics").json()["diagnostics"]["delivery"]
    return {
        "devices": devices,
        "health_p50_ms": statistics.median(health),
        "health_p99_ms": percentile(health, 0.99),
        "diagnostics_p50_ms": statistics.median(diagnostics),
        "diagnostics_p99_ms": percentile(diagnostics, 0.99),
        "status_p50_ms": statistics.median(status),
        "status_p99_ms": percentile(status, 0.99),
        "delivered": delivery["delivered"],
        "spooled": delivery["spooled"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short run (under a minute)")
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    repeat, requests, settle = (1, 500, 5.0) if args.quick else (args.repeat, args.requests, 10.0)
    rows = []
    for n in range(repeat):
        for devices in (0, args.devices):
            row = one_run(devices, requests, settle)
            rows.append(row)
            print(
                f"run {n + 1} devices={devices}: /health p50 {row['health_p50_ms']:.2f} ms "
                f"p99 {row['health_p99_ms']:.2f} ms; /diagnostics p50 "
                f"{row['diagnostics_p50_ms']:.1f} ms p99 {row['diagnostics_p99_ms']:.1f} ms; "
                f"/status/data p50 {row['status_p50_ms']:.1f} ms p99 "
                f"{row['status_p99_ms']:.1f} ms; "
                f"delivered {row['delivered']}",
                flush=True,
            )
    loaded = [r for r in rows if r["devices"] == args.devices]
    idle = [r for r in rows if r["devices"] == 0]

    def med(rs: list[dict[str, Any]], key: str) -> float:
        return statistics.median(r[key] for r in rs)

    print(
        "\n| devices | /health p50 ms | /health p99 ms | /diagnostics p50 ms | /diag. p99 ms "
        "| /status/data p50 ms | /status/data p99 ms |"
    )
    print("|---|---|---|---|---|---|---|")
    for rs in (idle, loaded):
        print(
            f"| {rs[0]['devices']} | {med(rs, 'health_p50_ms'):.2f} "
            f"| {med(rs, 'health_p99_ms'):.2f} | {med(rs, 'diagnostics_p50_ms'):.1f} "
            f"| {med(rs, 'diagnostics_p99_ms'):.1f} | {med(rs, 'status_p50_ms'):.1f} "
            f"| {med(rs, 'status_p99_ms'):.1f} |"
        )
    ratio = med(loaded, "health_p99_ms") / med(idle, "health_p99_ms")
    print(f"\n/health p99 with {args.devices} devices / with none: {ratio:.2f}")
    print(
        f"RESULT devices={args.devices} health_p99_ms={med(loaded, 'health_p99_ms'):.2f} "
        f"diagnostics_p99_ms={med(loaded, 'diagnostics_p99_ms'):.1f} "
        f"status_data_p99_ms={med(loaded, 'status_p99_ms'):.1f}"
    )


if __name__ == "__main__":
    main()
