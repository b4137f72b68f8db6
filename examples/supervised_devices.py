"""Four simulated devices under supervision, one of them flaky; prints their health.

    python examples/supervised_devices.py          # 20 s, or DEMO_SECONDS=N; Ctrl-C stops

The flaky plug crashes every 7th poll and drops offline for 3 of every 12: watch it go
through backoff and unavailable, and come back, while its neighbours poll on undisturbed.
Halfway through, the demo switches the healthy plug off with a command.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import attrs
import trio

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from actors.simulated import SIMULATED_ACTORS
from runtime import ActorHealth
from runtime.lowlevel import open_actor_nursery
from runtime.testing import RecordingSink

DEVICES = [
    {"id": "living-room", "kind": "thermostat"},
    {"id": "desk-plug", "kind": "plug"},
    {"id": "bedroom-air", "kind": "air_quality"},
    # Crashes every 7th poll; offline for the last 3 of every 12.
    {"id": "garage-plug", "kind": "plug", "crash_every": 7, "offline_every": 12, "offline_for": 3},
]


@attrs.frozen
class Summary:
    devices: int
    readings: int
    restarts: int
    events: tuple[str, ...]


def table(rows: Sequence[ActorHealth], elapsed: float) -> str:
    now = datetime.now(UTC)
    lines = [
        f"t={elapsed:5.1f}s",
        f"  {'device':<12} {'actor':<20} {'state':<11} {'for':>6} {'restarts':>8} "
        f"{'polls':>5} {'readings':>8}  last error",
    ]
    for h in rows:
        since = (now - h.state_since).total_seconds()
        error = f"{h.last_error.code}: {h.last_error.message}" if h.last_error else "-"
        lines.append(
            f"  {h.device_id:<12} {h.actor:<20} {h.state.value:<11} {since:5.1f}s "
            f"{h.restarts_total:>8} {h.polls:>5} {h.readings:>8}  {error[:60]}"
        )
    return "\n".join(lines)


async def main(
    seconds: float, *, every: float = 2.0, show: Callable[[str], None] = print
) -> Summary:
    """Run the demo for ``seconds`` (or until SIGINT/SIGTERM) and return a summary."""
    sink = RecordingSink()
    show(f"supervising {len(DEVICES)} simulated devices for {seconds:g} s (Ctrl-C stops)")
    async with trio.open_nursery() as root:
        stop = trio.Event()
        root.start_soon(_stop_on_signal, stop)
        async with open_actor_nursery(sink, rng=random.Random(2026)) as actors:
            fleet = [
                actors.spawn(SIMULATED_ACTORS[str(d["kind"])], {**d, "poll_interval_seconds": 1.0})
                for d in DEVICES
            ]
            start = trio.current_time()
            switched = False
            with trio.move_on_after(seconds):
                while not stop.is_set():
                    with trio.move_on_after(every):
                        await stop.wait()
                    elapsed = trio.current_time() - start
                    if not switched and elapsed >= seconds / 2:
                        switched = True
                        result = await fleet[1].command("turn_off")
                        show(f"-> command turn_off to desk-plug: {result}")
                    show(table([s.health() for s in fleet], elapsed))
            healths = [s.health() for s in fleet]
        root.cancel_scope.cancel()
    summary = Summary(
        devices=len(healths),
        readings=sum(h.readings for h in healths),
        restarts=sum(h.restarts_total for h in healths),
        events=tuple(f"{e.device_id}:{e.event_type}" for e in sink.event_records),
    )
    show(
        f"summary: devices={summary.devices} readings={summary.readings} "
        f"restarts={summary.restarts} events={len(summary.events)}"
    )
    for event in summary.events:
        show(f"  event {event}")
    return summary


async def _stop_on_signal(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            stop.set()
            return


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    trio.run(main, float(os.environ.get("DEMO_SECONDS", "20")))
