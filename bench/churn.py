"""Churn: configs added and removed at 1,000 a minute for 30 minutes; memory must stay flat.

Not run in CI. ``piphi-runtime serve examples.simulated_home:integration`` (default
settings) delivers to the fast Core sink (bench/core_sink.py) while the driver keeps
``--population`` configs running (simulated thermostats polled every ``--interval`` s)
and replaces the oldest ones with new ids at ``--rate`` a minute: every ``--step``
seconds one ``/config/sync`` snapshot removes the oldest and adds as many new configs,
each id used once in the run. Every 10 s it samples the runtime's RSS (``VmRSS`` of the
process), the runtime's own memory figures (``/health``) and the outbox's per-config
figures held (``configs_tracked``), and at the end reports:

- memory over time, one row a minute, and its growth: the median RSS of the last window
  (5 minutes; 10 s with ``--quick``) against the median of the first window after the
  warm-up. Flat means within 10 %; the slope of RSS over the run after warm-up (least
  squares, MiB per hour) is reported too;
- configs added and removed, snapshots sent and their latency (median and p99);
- ``configs_tracked`` at the end, which must stay near the population: a removed
  config's delivery figures are forgotten once nothing of it is queued.

Usage: python bench/churn.py [--quick] [--minutes 30] [--population 1000] [--rate 1000]

``--quick`` runs 45 s (population 300, 10 s warm-up). The run ends with one line
``RESULT key=value ...``; it exits 1 if memory was not flat or figures were kept for
removed configs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.delivery import CONTAINER_ID, TOKEN, Service, Sink, log  # noqa: E402

SAMPLE_EVERY = 10.0
FLAT = 0.10
INTEGRATION_ID = "bench-churn"
HEADERS = {"X-Container-Id": CONTAINER_ID, "X-PiPhi-Integration-Token": TOKEN}


class Runtime:
    """``piphi-runtime serve`` of the simulated home, delivering to ``sink_url``."""

    def __init__(self, sink_url: str, log_dir: Path) -> None:
        state = log_dir / "state"
        env = dict(
            os.environ,
            PIPHI_CORE_BASE_URL=sink_url,
            PIPHI_STATE_DIR=str(state),
            PIPHI_CONFIG_SNAPSHOT_PATH=str(state / "no-mount.json"),
            PIPHI_LOG_LEVEL="WARNING",
        )
        for key in ("PIPHI_CONTAINER_ID", "PIPHI_INTEGRATION_INTERNAL_TOKEN", "PORT"):
            env.pop(key, None)
        argv = [
            sys.executable,
            "-c",
            "import sys; from runtime._cli import main; sys.exit(main())",
            *("serve", "examples.simulated_home:integration", "--host", "127.0.0.1"),
            *("--port", "0"),
        ]
        self.service = Service("runtime", argv, log_dir, env)
        try:
            deadline = time.monotonic() + 30
            line = ""
            while not line.startswith("serving "):  # bounded by the deadline
                line = self.service.line(max(0.01, deadline - time.monotonic())).strip()
        except BaseException:
            self.service.close()
            raise
        url = line.rsplit(" on ", 1)[1].split()[0]
        self.http = httpx.Client(base_url=url, headers=HEADERS, timeout=60.0)
        self.generation = 0

    def rss_mib(self) -> float:
        with open(f"/proc/{self.service.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def sync(self, ids: list[int], interval: float) -> float:
        """Snapshot exactly ``ids`` (config ``churn-<n>``); returns the seconds it took."""
        self.generation += 1
        snapshot = {
            "container_id": CONTAINER_ID,
            "integration_id": INTEGRATION_ID,
            "generation": self.generation,
            "reason": "churn",
            "configs": [
                {
                    "id": f"churn-{n}",
                    "config_id": f"churn-{n}",
                    "device_type": "thermostat",
                    "poll_interval_seconds": interval,
                }
                for n in ids
            ],
        }
        started = time.monotonic()
        response = self.http.post("/config/sync", json=snapshot)
        response.raise_for_status()
        return time.monotonic() - started

    def figures(self) -> dict[str, Any]:
        body = self.http.get("/diagnostics", params={"device_id": "-"}).json()["diagnostics"]
        delivery = body["delivery"]
        return {  # .get(): a runtime from before issue 15 has neither figure (A/B runs)
            "memory": body["runtime"].get("memory") or {},
            "configs_tracked": delivery.get("configs_tracked"),
            "devices": body["runtime"]["devices"],
            "pending": delivery["queue_depth"] + delivery["spool_depth"],
        }

    def close(self) -> None:
        self.http.close()
        self.service.close()


def _slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    if len(points) < 3:
        return None
    mean_t = statistics.fmean(t for t, _ in points)
    mean_v = statistics.fmean(v for _, v in points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    slope = sum((t - mean_t) * (v - mean_v) for t, v in points) / spread
    return round(slope * 3600, 2)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="45 s, 300 configs")
    parser.add_argument("--minutes", type=float)
    parser.add_argument("--population", type=int)
    parser.add_argument("--rate", type=float, default=1000.0, help="configs replaced a minute")
    parser.add_argument("--interval", type=float, default=10.0, help="poll interval, s")
    parser.add_argument("--step", type=float, default=2.0, help="seconds between snapshots")
    parser.add_argument("--json", help="also write the samples to this file")
    args = parser.parse_args()
    minutes = args.minutes or (0.75 if args.quick else 30.0)
    population = args.population or (300 if args.quick else 1000)
    warmup = 10.0 if args.quick else 120.0
    window = 10.0 if args.quick else 300.0
    per_step = max(1, round(args.rate * args.step / 60))
    step = per_step * 60 / args.rate  # so that exactly --rate configs go a minute

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # run the finally blocks that stop the subprocesses

    signal.signal(signal.SIGTERM, terminate)
    log_dir = Path(tempfile.mkdtemp(prefix="churn-"))
    log(
        f"{population} configs, {per_step} replaced every {step:.2f} s "
        f"({per_step * 60 / step:.0f}/min) for {minutes:g} min"
    )
    samples: list[dict[str, Any]] = []
    latencies: list[float] = []
    sink = Sink(log_dir, lifetime=minutes * 60 + 600)
    runtime = Runtime(sink.url, log_dir)
    running: deque[int] = deque(range(population))
    next_id = population
    added = removed = 0
    try:
        idle = runtime.rss_mib()
        latencies.append(runtime.sync(list(running), args.interval))
        t0 = time.monotonic()
        next_sample = next_step = 0.0
        while (now := time.monotonic() - t0) < minutes * 60:  # bounded by --minutes
            if now >= next_step:
                for _ in range(per_step):
                    running.popleft()
                    running.append(next_id)
                    next_id += 1
                added, removed = added + per_step, removed + per_step
                latencies.append(runtime.sync(list(running), args.interval))
                next_step += step
            if now >= next_sample:
                figures = runtime.figures()
                sample = {"t": round(now, 1), "rss_mib": round(runtime.rss_mib(), 2), **figures}
                samples.append(sample)
                if len(samples) % 6 == 1:
                    log(json.dumps(sample))
                next_sample += SAMPLE_EVERY
            time.sleep(max(0.0, min(next_step, next_sample) - (time.monotonic() - t0)))
        final = runtime.figures()
    finally:
        runtime.close()
        sink.close()
    shutil.rmtree(log_dir, ignore_errors=True)

    end = minutes * 60

    def median_rss(lo: float, hi: float) -> float | None:
        values = [s["rss_mib"] for s in samples if lo <= s["t"] < hi]
        return round(statistics.median(values), 2) if values else None

    first, last = median_rss(warmup, warmup + window), median_rss(end - window, end + 1)
    growth = None if first is None or last is None else (last - first) / first
    slope = _slope_per_hour([(s["t"], s["rss_mib"]) for s in samples if s["t"] >= warmup])
    print("| minute | RSS MiB | runtime's rss_mb | trend MB/min | configs tracked | devices |")
    print("|---|---|---|---|---|---|")
    for s in samples[:: max(1, int(60 / SAMPLE_EVERY))]:
        memory = s["memory"]
        print(
            f"| {s['t'] / 60:.0f} | {s['rss_mib']:.1f} | {memory.get('rss_mb')} | "
            f"{memory.get('trend_mb_per_min')} | {s['configs_tracked']} | {s['devices']:,} |"
        )
    ordered = sorted(latencies)
    summary = {
        "minutes": minutes,
        "population": population,
        "replaced_per_min": round(per_step * 60 / step),
        "added": added,
        "removed": removed,
        "snapshots": len(latencies),
        "sync_p50_ms": round(1000 * statistics.median(ordered), 1),
        "sync_p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1),
        "rss_idle_mib": round(idle, 1),
        "rss_first_mib": first,
        "rss_last_mib": last,
        "rss_max_mib": max(s["rss_mib"] for s in samples),
        "rss_growth_pct": None if growth is None else round(100 * growth, 1),
        "rss_slope_mib_per_hour": slope,
        "configs_tracked_end": final["configs_tracked"],
        "devices_end": final["devices"],
    }
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "samples": samples}))
    print("RESULT " + " ".join(f"{k}={v}" for k, v in summary.items()))
    flat = growth is not None and growth <= FLAT
    # Figures are kept while a config's items are queued: a few steps' worth at most.
    tracked = final["configs_tracked"]
    bounded = tracked is None or tracked <= population + 2 * per_step + 1
    if not (flat and bounded):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
