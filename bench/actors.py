"""N simulated actors polling once a second on real time: RSS, CPU, lateness, overruns;
then a gateway's children against as many actors, on trio's virtual clock.

Each configuration runs in a fresh child process, so RSS is measured against that
process's own baseline. Two implementations run in the same invocation:

- ``runtime``: the real thing: supervised actors on the shared scheduler.
- ``naive``: what integrations hand-write today: one task per device with
  ``trio.sleep_until`` on a fixed grid, calling the same simulated read(). It has no
  supervision, timeouts, mailbox or health; it is the floor the runtime is compared to.

Lateness is the time from a poll's scheduled due time to the moment poll() starts.

The second table compares the two ways of running D devices that report every S seconds
(default 500 every 10 s), in the same invocation:

- ``actors``: D supervised actors, each polling its simulated thermostat.
- ``gateway``: one push actor whose ``run()`` reports each of its D children in turn
  (``report(readings, device_id=child, timestamp=...)``), with the same readings; the
  runtime keeps each child's state and staleness.

At 50 reports a second either costs well under 1% of a core, less than the noise of a
shared machine, so this table runs on trio's virtual clock: time jumps whenever every
task waits, so the CPU measured is the work done per report, whatever the machine's load.

Usage: python bench/actors.py [--quick] [--actors 1000 10000 50000] [--repeat 3]
       [--virtual-devices 500] [--virtual-interval 10] [--virtual-impl actors gateway]
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

import trio.testing

from actors.simulated import SimulatedConfig, SimulatedThermostat
from runtime import DeviceActor, Reading
from runtime.lowlevel import EventRecord, TelemetryRecord, open_actor_nursery

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

    def admit(self) -> bool:
        return True


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


class GatewayConfig(SimulatedConfig):
    children: int = 500


class _ChildSim:
    """What ``SimulatedThermostat.read()`` needs of its device: one per child."""

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self.setpoint_c = 21.0


class BenchGateway(DeviceActor[GatewayConfig]):
    """A push gateway: its run() reports each child every interval, in turn, the same four
    readings a simulated thermostat gives (one wakeup per report, as a message per child
    from an MQTT broker or a radio would be)."""

    async def run(self) -> None:
        n, interval = self.config.children, self.config.poll_interval_seconds or 10.0
        ids = [f"child-{i}" for i in range(n)]
        sims = [_ChildSim(i) for i in range(n)]
        read = SimulatedThermostat.read
        step, due, tick = interval / n, trio.current_time(), 0
        while True:
            tick += 1
            for child, sim in zip(ids, sims, strict=True):
                await trio.sleep_until(due)
                readings: list[Reading] = read(sim, tick)  # type: ignore[arg-type]
                self.report(readings, device_id=child)
                due += step


async def run_virtual(impl: str, n: int, interval: float, seconds: float) -> dict[str, Any]:
    """D devices reporting every ``interval`` on the virtual clock: CPU per report, RSS per
    device. Measured over ``seconds`` after two intervals (every device started)."""
    sink = CountingSink()
    base_rss = rss_kib()
    async with open_actor_nursery(sink, rng=random.Random(0)) as actors:
        if impl == "gateway":
            actors.spawn(
                BenchGateway, GatewayConfig(id="gw", poll_interval_seconds=interval, children=n)
            )
        else:
            for i in range(n):
                cfg = SimulatedConfig(id=f"dev-{i}", poll_interval_seconds=interval, seed=i)
                actors.spawn(SimulatedThermostat, cfg)
        await trio.sleep(2 * interval)
        start_count, start_cpu = sink.telemetry_count, cpu_seconds()
        await trio.sleep(seconds)
        cpu, reports = cpu_seconds() - start_cpu, sink.telemetry_count - start_count
        rss = (rss_kib() - base_rss) / n
        if impl == "gateway":
            (gateway,) = actors
            assert len(gateway.children()) == n, "every child is kept"
    return {"reports": reports, "cpu_us_per_report": 1e6 * cpu / reports, "rss_per_device_kib": rss}


def child(impl: str, n: int, warmup: float, duration: float, interval: float) -> None:
    if impl in ("actors", "gateway"):
        clock = trio.testing.MockClock(autojump_threshold=0)
        result = trio.run(run_virtual, impl, n, interval, duration, clock=clock)
    else:
        runner = run_runtime if impl == "runtime" else run_naive
        result = trio.run(runner, n, warmup, duration)
    result.update(impl=impl, actors=n)
    print(json.dumps(result), flush=True)


def spawn_child(
    impl: str, n: int, warmup: float, duration: float, interval: float = INTERVAL
) -> dict[str, Any]:
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
        "--virtual-interval",
        str(interval),
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
        "--impl", nargs="*", default=["runtime", "naive"], choices=["runtime", "naive"]
    )
    parser.add_argument("--virtual-devices", type=int, default=500)
    parser.add_argument("--virtual-interval", type=float, default=10.0)
    parser.add_argument("--virtual-seconds", type=float, default=600.0)
    parser.add_argument(
        "--virtual-impl", nargs="*", default=["actors", "gateway"], choices=["actors", "gateway"]
    )
    parser.add_argument(
        "--child", choices=["runtime", "naive", "actors", "gateway"], help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        child(args.child, args.actors[0], args.warmup, args.duration, args.virtual_interval)
        return
    if args.quick:
        args.actors, args.repeat, args.warmup, args.duration = [10000], 1, 3.0, 8.0
        args.virtual_seconds = 300.0

    print(
        f"# {os.cpu_count()} cores, python {sys.version.split()[0]}, trio {trio.__version__}; "
        f"interval {INTERVAL:g} s, warmup {args.warmup:g} s, window {args.duration:g} s, "
        f"{args.repeat} run(s) each, medians"
    )
    medians = realtime_table(args) if args.impl else {}
    virtual = virtual_table(args) if args.virtual_impl else {}
    result_line(args, medians, virtual)


def realtime_table(args: argparse.Namespace) -> dict[tuple[str, int], dict[str, float]]:
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
    return medians


def virtual_table(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    n, interval, seconds = args.virtual_devices, args.virtual_interval, args.virtual_seconds
    print(
        f"\n# {n} devices reporting every {interval:g} s, trio's virtual clock, "
        f"{seconds:g} virtual s measured, {args.repeat} run(s) each, medians"
    )
    print("| impl | devices | reports | CPU us per report | RSS KiB per device |")
    print("|---" * 5 + "|")
    medians: dict[str, dict[str, float]] = {}
    for impl in args.virtual_impl:
        runs = [spawn_child(impl, n, 0.0, seconds, interval) for _ in range(args.repeat)]
        med = {
            k: statistics.median(r[k] for r in runs)
            for k in ("reports", "cpu_us_per_report", "rss_per_device_kib")
        }
        medians[impl] = med
        what = f"{n} children of 1 actor" if impl == "gateway" else f"{n} actors"
        print(
            f"| {impl} | {what} | {med['reports']:.0f} | {med['cpu_us_per_report']:.1f} | "
            f"{med['rss_per_device_kib']:.2f} |",
            flush=True,
        )
    if "actors" in medians and "gateway" in medians:
        g, a = medians["gateway"], medians["actors"]
        cpu = g["cpu_us_per_report"] / a["cpu_us_per_report"]
        rss = g["rss_per_device_kib"] / a["rss_per_device_kib"]
        print(f"# gateway/actors: CPU per report {cpu:.2f}, RSS per device {rss:.2f}")
    return medians


def result_line(
    args: argparse.Namespace,
    medians: dict[tuple[str, int], dict[str, float]],
    virtual: dict[str, dict[str, float]],
) -> None:
    parts = []
    if medians:
        first = args.impl[0]
        key = (first, 10000) if (first, 10000) in medians else next(iter(medians))
        m = medians[key]
        parts.append(
            f"actors={key[1]} lateness_p99_ms={m['lateness_p99_ms']:.2f} "
            f"rss_per_actor_kib={m['rss_per_actor_kib']:.2f} cpu_pct={m['cpu_pct']:.1f}"
        )
        if ("naive", key[1]) in medians and key[0] == "runtime":
            naive = medians[("naive", key[1])]
            parts.append(f"cpu_ratio_vs_naive={m['cpu_pct'] / naive['cpu_pct']:.2f}")
    for impl, med in virtual.items():
        parts.append(
            f"{impl}_devices={args.virtual_devices} "
            f"{impl}_us_per_report={med['cpu_us_per_report']:.1f} "
            f"{impl}_rss_per_device_kib={med['rss_per_device_kib']:.2f}"
        )
    if "actors" in virtual and "gateway" in virtual:
        g, a = virtual["gateway"], virtual["actors"]
        parts.append(
            f"gateway_cpu_ratio={g['cpu_us_per_report'] / a['cpu_us_per_report']:.2f} "
            f"gateway_rss_ratio={g['rss_per_device_kib'] / a['rss_per_device_kib']:.2f}"
        )
    print("RESULT " + " ".join(parts))


if __name__ == "__main__":
    main()
