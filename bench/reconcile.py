"""Reconcile a 10,000-config snapshot from empty, then re-sync it with 1% of configs changed.

Reports the wall time of each apply (the time until ConfigSync returns: validation, the
diff, stopping replaced actors, spawning new ones) and how many actors were restarted,
which must be exactly the changed ones. The actors are simulated thermostats polling at
1 Hz, so the re-sync runs against a live fleet.

Usage: python bench/reconcile.py [--quick] [--configs 10000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

import trio

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from actors.simulated import SimulatedThermostat
from runtime.lowlevel import ConfigSync, open_actor_nursery
from runtime.testing import RecordingSink


def snapshot(n: int, generation: int, changed_every: int = 0) -> dict[str, Any]:
    configs = []
    for i in range(n):
        alias = f"room {i}" + (" (moved)" if changed_every and i % changed_every == 0 else "")
        configs.append(
            {"id": f"dev-{i}", "configId": f"cfg-{i}", "pollIntervalSeconds": 1, "alias": alias}
        )
    return {"generation": generation, "containerId": "bench", "configs": configs}


async def one_run(n: int, settle: float) -> dict[str, float]:
    first, second = snapshot(n, 1), snapshot(n, 2, changed_every=100)
    async with open_actor_nursery(RecordingSink(limit=1000)) as actors:
        sync = ConfigSync(actors, SimulatedThermostat, RecordingSink(limit=1000))
        start = time.perf_counter()
        initial = await sync.apply_snapshot(first)
        initial_ms = (time.perf_counter() - start) * 1000
        await trio.sleep(settle)  # let the fleet set up and poll
        start = time.perf_counter()
        resync = await sync.apply_snapshot(second)
        resync_ms = (time.perf_counter() - start) * 1000
        assert len(initial.added) == n and resync.unchanged == n - len(resync.restarted)
        return {
            "initial_ms": initial_ms,
            "resync_1pct_ms": resync_ms,
            "restarted": len(resync.restarted),
            "actors": len(actors),
        }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 runs, 1 s settle (<1 min)")
    parser.add_argument("--configs", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--settle", type=float, default=3.0)
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.settle = 3, 1.0
    runs = [trio.run(one_run, args.configs, args.settle) for _ in range(args.repeat)]
    print(
        f"# {os.cpu_count()} cores, python {sys.version.split()[0]}, trio {trio.__version__}; "
        f"{args.configs} configs, {args.repeat} runs, medians"
    )
    print("| run | initial apply ms | 1%-changed re-sync ms | restarted | actors after |")
    print("|---|---|---|---|---|")
    for i, r in enumerate(runs, 1):
        row = (r["initial_ms"], r["resync_1pct_ms"], r["restarted"], r["actors"])
        print(f"| {i} | {row[0]:.0f} | {row[1]:.1f} | {row[2]:.0f} | {row[3]:.0f} |")
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(
        f"RESULT configs={args.configs} initial_ms={med['initial_ms']:.0f} "
        f"resync_1pct_ms={med['resync_1pct_ms']:.1f} restarted={med['restarted']:.0f}"
    )


if __name__ == "__main__":
    main()
