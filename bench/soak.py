"""Soak: 1,000 devices for 30 minutes against a Core that goes away at random.

Not run in CI. Our runtime (bench/_ours_peer.py under ``piphi-runtime serve``, default
settings) polls N simulated devices at 1 Hz and delivers to the fast Core sink
(bench/core_sink.py). At random times the sink refuses connections or answers 503 for a
random while (the schedule comes from ``--seed``, so a run can be repeated). Every 10 s the
driver samples the runtime's RSS and CPU, readings generated and arrived, and what the
runtime still holds for Core; at the end it stops generation, waits (bounded) for the
backlog and reports:

- memory over time, one row a minute, and its growth: the median RSS of the last five
  minutes against the median of the five after warm-up, both taken only while Core was
  up and the backlog empty (a backlog is held in memory up to the outbox's limit, which
  is not a leak). Flat means within 10%;
- readings lost (generated minus distinct arrivals by device and seq; must be 0) and
  duplicated (a request cut off by an outage is resent with the same telemetry_id);
- actor restarts (must be 0: Core's outages are not the devices' failures).

Usage: python bench/soak.py [--quick] [--devices 1000] [--minutes 30] [--seed 1]

``--quick`` is 100 devices for 45 s with one 8 s outage. The run ends with one line
``RESULT ...``; it exits 1 if anything was lost or memory was not flat.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.compare_piphi import OursPeer, distinct  # noqa: E402
from bench.delivery import Sink, log  # noqa: E402

SAMPLE_EVERY = 10.0
FLAT = 0.10


def outages(seed: int, minutes: float, quick: bool) -> list[tuple[float, float, str]]:
    """(start s, seconds, mode): gaps of 1-4 minutes, outages of 5-60 s, none in the
    first or the last two minutes, so the start and the end are measured on a quiet link."""
    if quick:
        return [(15.0, 8.0, "refuse")]
    rng = random.Random(seed)
    plan, t, end = [], 120.0, minutes * 60 - 120
    while True:  # bounded: t grows by at least 60 s a turn
        t += rng.uniform(60, 240)
        length = rng.uniform(5, 60)
        if t + length > end:
            return plan
        plan.append((round(t, 1), round(length, 1), rng.choice(("refuse", "503"))))
        t += length


def restarts(peer: OursPeer) -> int:
    """Restarts over every actor, read a page of 1000 at a time."""
    total, offset = 0, 0
    while offset is not None:  # bounded: the pages end
        params = {"offset": offset, "limit": 1000}
        body = peer.http.get("/diagnostics", params=params, timeout=30).json()["diagnostics"]
        total += sum(int(actor["restarts_total"]) for actor in body["actors"])
        offset = body["actors_page"]["next_offset"]
    return total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="100 devices, 45 s")
    parser.add_argument("--devices", type=int)
    parser.add_argument("--minutes", type=float)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", help="also write the samples to this file")
    args = parser.parse_args()
    devices = args.devices or (100 if args.quick else 1000)
    minutes = args.minutes or (0.75 if args.quick else 30.0)
    warmup = 20.0 if args.quick else 120.0
    plan = outages(args.seed, minutes, args.quick)

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # run the finally blocks that stop the subprocesses

    signal.signal(signal.SIGTERM, terminate)
    log_dir = Path(tempfile.mkdtemp(prefix="soak-"))
    log(f"{devices} devices at {args.interval:g} s for {minutes:g} min; outages {plan}")
    samples: list[dict[str, Any]] = []
    sink = Sink(log_dir, lifetime=minutes * 60 + 900)
    peer = OursPeer(sink.url, log_dir, "ours-soak")
    try:
        idle_rss = peer.rss_kib()
        peer.sync(devices, args.interval)
        t0 = time.monotonic()
        cpu0 = peer.service.cpu_seconds()
        pending_outages = list(plan)
        next_sample = 0.0
        while (now := time.monotonic() - t0) < minutes * 60:  # bounded by --minutes
            if pending_outages and now >= pending_outages[0][0]:
                _, length, mode = pending_outages.pop(0)
                sink.post("/admin/down", seconds=length, mode=mode)
                log(f"t={now:.0f} s: Core {mode} for {length:g} s")
            if now >= next_sample:
                down = any(s <= now < s + length + 5 for s, length, _ in plan)
                generated = int(peer.counters()["generated"])
                stats = sink.stats()
                sample = {
                    "t": round(now, 1),
                    "rss_mib": round(peer.rss_kib() / 1024, 2),
                    "cpu_pct": round(100 * (peer.service.cpu_seconds() - cpu0) / max(now, 1), 1),
                    "generated": generated,
                    "arrived": distinct(stats),
                    "pending": peer.pending(),
                    "core_down": down,
                }
                samples.append(sample)
                if len(samples) % 6 == 1:
                    log(json.dumps(sample))
                next_sample += SAMPLE_EVERY
            time.sleep(0.5)  # outages start and samples are taken within half a second
        generated = int(peer.counters("pause")["generated"])
        stopped = time.monotonic()
        while True:  # bounded: 120 s
            stats = sink.stats()
            if distinct(stats) >= generated or time.monotonic() - stopped > 120:
                break
            time.sleep(0.5)
        drained = time.monotonic() - stopped
        total_restarts = restarts(peer)
    finally:
        peer.close()
        sink.close()
    shutil.rmtree(log_dir, ignore_errors=True)

    def quiet_rss(lo: float, hi: float) -> float | None:
        values = [
            s["rss_mib"]
            for s in samples
            if lo <= s["t"] < hi and not s["core_down"] and s["pending"] < devices
        ]
        return round(statistics.median(values), 2) if values else None

    span = 60.0 if args.quick else 300.0
    end = minutes * 60
    first = quiet_rss(warmup, warmup + span)
    last = quiet_rss(end - span, end)
    growth = None if first is None or last is None else (last - first) / first
    print("| minute | RSS MiB | CPU % (cumulative) | generated | arrived | held for Core |")
    print("|---|---|---|---|---|---|")
    for s in samples[:: max(1, int(60 / SAMPLE_EVERY))]:
        print(
            f"| {s['t'] / 60:.0f} | {s['rss_mib']:.1f} | {s['cpu_pct']:.0f} | "
            f"{s['generated']:,} | {s['arrived']:,} | {s['pending']:,} |"
        )
    lost = generated - distinct(stats)
    duplicated = int(stats["telemetry"] - distinct(stats))
    summary = {
        "devices": devices,
        "minutes": minutes,
        "outages": len(plan),
        "outage_s": round(sum(length for _, length, _ in plan), 1),
        "generated": generated,
        "lost": lost,
        "duplicated": duplicated,
        "restarts": total_restarts,
        "rss_idle_mib": round(idle_rss / 1024, 1),
        "rss_first_mib": first,
        "rss_last_mib": last,
        "rss_max_mib": max(s["rss_mib"] for s in samples),
        "rss_growth_pct": None if growth is None else round(100 * growth, 1),
        "cpu_pct": samples[-1]["cpu_pct"],
        "drained_after_s": round(drained, 1),
    }
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "samples": samples}))
    log(json.dumps(summary))
    print("RESULT " + " ".join(f"{k}={v}" for k, v in summary.items()))
    flat = growth is not None and growth <= FLAT
    if lost or not flat or total_restarts:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
