"""N simulated actors polling once a second on real time: RSS, CPU, lateness, overruns.

Each configuration runs in a fresh child process, so RSS is measured against that
process's own baseline. Two implementations run in the same invocation:

- ``runtime``: the real thing: supervised actors on the shared scheduler.
- ``naive``: what integrations hand-write today: one task per device with
  ``trio.sleep_until`` on a fixed grid, calling the same simulated read(). It has no
  supervision, timeouts, mailbox or health; it is the floor the runtime is compared to.

Lateness is the time from a poll's scheduled due time to the moment poll() starts.
Usage: python bench/actors.py [--quick] [--actors 1000 10000 50000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from array import array
from typing import Any

import trio

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from actors.simulated import SimulatedConfig, SimulatedThermostat
from runtime import EventRecord, TelemetryRecord, open_actor_nursery

INTERVAL = 1.0


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class CountingSink:
    def __init__(self) -> None:
        self.telemetry_count = 0
        self.event_count = 0

    def telemetry(self, record: TelemetryRecord) -> None:
        self.telemetry_count += 1

    def event(self, record: EventRecord) -> None:
        self.event_count += 1


class Lateness:
    """Samples taken only inside the measurement window."""

    def __init__(self) -> None:
        self.samples = array("d")
        self.recording = False

    def add(self, seconds: float) -> None:
        if self.recording:
            self.samples.append(seconds)


LATENESS = Lateness()


class TimedThermostat(SimulatedThermostat):
    async def poll(self):  # type: ignore[no-untyped-def]
        # The supervisor's due time for the poll now starting (bench-only peek).
        LATENESS.add(trio.current_time() - self._outputs._due)  # type: ignore[union-attr, attr-defined]
        return await super().poll()


def config(i: int) -> SimulatedConfig:
    return SimulatedConfig(id=f"dev-{i}", poll_interval_seconds=INTERVAL, seed=i)


async def run_runtime(n: int, warmup: float, duration: float) -> dict[str, Any]:
    sink = CountingSink()
    configs = [config(i) for i in range(n)]
    base_rss = rss_kib()
    async with open_actor_nursery(sink, rng=random.Random(0)) as actors:
        for cfg in configs:
            actors.spawn(TimedThermostat, cfg)
        await trio.sleep(warmup)
        result = await measure(duration, sink)
        result["overruns"] = sum(s.health().overruns for s in actors)
        result["rss_per_actor_kib"] = (rss_kib() - base_rss) / n
        actors_alive = len(actors)
    result["actors_alive"] = actors_alive
    return result


async def run_naive(n: int, warmup: float, duration: float) -> dict[str, Any]:
    sink = CountingSink()
    configs = [config(i) for i in range(n)]
    base_rss = rss_kib()
    rng = random.Random(0)
    overruns = 0

    async def device(cfg: SimulatedConfig) -> None:
        nonlocal overruns
        actor = SimulatedThermostat(cfg)
        await actor.setup()
        due = trio.current_time() + rng.uniform(0, INTERVAL)
        while True:
            await trio.sleep_until(due)
            LATENESS.add(trio.current_time() - due)
            actor._tick += 1
            readings = actor.read(actor._tick)
            sink.telemetry(readings)  # type: ignore[arg-type]
            due += INTERVAL
            now = trio.current_time()
            while due <= now:
                due += INTERVAL
                overruns += 1

    async with trio.open_nursery() as nursery:
        for cfg in configs:
            nursery.start_soon(device, cfg)
        await trio.sleep(warmup)
        result = await measure(duration, sink)
        result["overruns"] = overruns
        result["rss_per_actor_kib"] = (rss_kib() - base_rss) / n
        result["actors_alive"] = n
        nursery.cancel_scope.cancel()
    return result


async def measure(duration: float, sink: CountingSink) -> dict[str, Any]:
    start_count, start_cpu, start_wall = sink.telemetry_count, cpu_seconds(), time.monotonic()
    LATENESS.recording = True
    await trio.sleep(duration)
    LATENESS.recording = False
    wall = time.monotonic() - start_wall
    samples = sorted(LATENESS.samples)
    return {
        "polls_per_s": (sink.telemetry_count - start_count) / wall,
        "cpu_pct": 100 * (cpu_seconds() - start_cpu) / wall,
        "lateness_p50_ms": 1000 * samples[len(samples) // 2] if samples else None,
        "lateness_p99_ms": 1000 * samples[int(len(samples) * 0.99)] if samples else None,
        "lateness_max_ms": 1000 * samples[-1] if samples else None,
        "samples": len(samples),
    }


def child(impl: str, n: int, warmup: float, duration: float) -> None:
    runner = run_runtime if impl == "runtime" else run_naive
    result = trio.run(runner, n, warmup, duration)
    result.update(impl=impl, actors=n)
    print(json.dumps(result), flush=True)


def spawn_child(impl: str, n: int, warmup: float, duration: float) -> dict[str, Any]:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        impl,
        "--actors",
        str(n),
        "--warmup",
        str(warmup),
        "--duration",
        str(duration),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="10k actors, short window (<1 min)")
    parser.add_argument("--actors", type=int, nargs="+", default=[1000, 10000, 50000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument(
        "--impl", nargs="+", default=["runtime", "naive"], choices=["runtime", "naive"]
    )
    parser.add_argument("--child", choices=["runtime", "naive"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.actors[0], args.warmup, args.duration)
        return
    if args.quick:
        args.actors, args.repeat, args.warmup, args.duration = [10000], 1, 3.0, 8.0

    print(
        f"# {os.cpu_count()} cores, python {sys.version.split()[0]}, trio {trio.__version__}; "
        f"interval {INTERVAL:g} s, warmup {args.warmup:g} s, window {args.duration:g} s, "
        f"{args.repeat} run(s) each, medians"
    )
    header = (
        "| impl | actors | polls/s | CPU % of one core | RSS KiB/actor "
        "| lateness p50 ms | p99 ms | max ms | overruns |"
    )
    print(header)
    print("|---" * 9 + "|")
    medians: dict[tuple[str, int], dict[str, float]] = {}
    for n in args.actors:
        for impl in args.impl:
            runs = [spawn_child(impl, n, args.warmup, args.duration) for _ in range(args.repeat)]
            med = {
                k: statistics.median(r[k] for r in runs)
                for k in (
                    "polls_per_s",
                    "cpu_pct",
                    "rss_per_actor_kib",
                    "lateness_p50_ms",
                    "lateness_p99_ms",
                    "lateness_max_ms",
                    "overruns",
                )
            }
            medians[(impl, n)] = med
            print(
                f"| {impl} | {n} | {med['polls_per_s']:.0f} | {med['cpu_pct']:.1f} | "
                f"{med['rss_per_actor_kib']:.2f} | {med['lateness_p50_ms']:.2f} | "
                f"{med['lateness_p99_ms']:.2f} | {med['lateness_max_ms']:.1f} | "
                f"{med['overruns']:.0f} |",
                flush=True,
            )
    for n in args.actors:
        if ("runtime", n) in medians and ("naive", n) in medians:
            r, b = medians[("runtime", n)], medians[("naive", n)]
            print(
                f"# {n} actors: runtime/naive CPU ratio {r['cpu_pct'] / b['cpu_pct']:.2f}, "
                f"RSS ratio {r['rss_per_actor_kib'] / b['rss_per_actor_kib']:.2f}"
            )
    key = (args.impl[0], 10000) if (args.impl[0], 10000) in medians else next(iter(medians))
    m = medians[key]
    extra = ""
    if ("naive", key[1]) in medians and key[0] == "runtime":
        extra = f" cpu_ratio_vs_naive={m['cpu_pct'] / medians[('naive', key[1])]['cpu_pct']:.2f}"
    print(
        f"RESULT actors={key[1]} lateness_p99_ms={m['lateness_p99_ms']:.2f} "
        f"rss_per_actor_kib={m['rss_per_actor_kib']:.2f} cpu_pct={m['cpu_pct']:.1f}{extra}"
    )


if __name__ == "__main__":
    main()
