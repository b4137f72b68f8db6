"""The one-command demo: a dev Core, the simulated-home integration, five devices.

    make demo                    # until Ctrl-C
    DEMO_SECONDS=20 make demo    # 20 s, then a summary, exit 0

Both servers run under hypercorn on 127.0.0.1 in this process: the dev Core
(``runtime.devcore``) and ``examples.simulated_home`` (``piphi-runtime serve``'s code
path). The dev Core holds five device configs and pushes them to the runtime as Core
would; one plug is flaky on purpose (it crashes every 7th poll and goes offline for 3 of
every 12), so supervision is visible while its neighbours report undisturbed. The live
view reads the runtime's ``/diagnostics`` and what the dev Core stored, once a second; the
runtime's own status page (``/status``, printed at the start) shows the same in a browser.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.simulated_home import integration
from runtime._serve import serve
from runtime.devcore import DevCore

#: The dev Core's and the runtime's shared integration token (a demo's, not a secret).
TOKEN = "demo-token"
DEVICES: list[dict[str, Any]] = [
    {"id": "living-room", "device_type": "thermostat", "seed": 1},
    {"id": "bedroom", "device_type": "thermostat", "seed": 2},
    {"id": "desk-plug", "device_type": "plug", "seed": 3},
    {
        "id": "garage-plug",
        "device_type": "plug",
        "seed": 4,
        "crash_every": 7,
        "offline_every": 12,
        "offline_for": 3,
    },
    {"id": "hall-air", "device_type": "air_quality", "seed": 5},
]


@attrs.frozen
class Summary:
    devices: int
    readings: dict[str, int]
    restarts: int
    events: tuple[str, ...]

    def line(self) -> str:
        total = sum(self.readings.values())
        return (
            f"summary: devices={self.devices} readings_delivered={total} "
            f"restarts={self.restarts} "
            + " ".join(f"{d}={n}" for d, n in sorted(self.readings.items()))
        )


async def snapshot_view(
    http: httpx.AsyncClient, core: DevCore
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    actors = (await http.get("/diagnostics")).json()["diagnostics"]["actors"]
    delivered = {
        a["device_id"]: len(await core.telemetry(device_id=a["device_id"], limit=100_000))
        for a in actors
    }
    return actors, delivered


def render(
    actors: list[dict[str, Any]], delivered: dict[str, int], elapsed: float, page: str = ""
) -> Any:
    from rich.table import Table

    table = Table(
        title=f"PiPhi runtime demo: {elapsed:4.0f} s (Ctrl-C to stop)",
        caption=f"status page: {page} (token {TOKEN})" if page else None,
    )
    for column in ("device", "actor", "state", "restarts", "polls", "delivered", "last error"):
        table.add_column(column)
    for a in actors:
        error = a.get("last_error") or {}
        state = a["state"]
        style = {"running": "green", "unavailable": "yellow", "backoff": "red"}.get(state, "")
        table.add_row(
            a["device_id"],
            a["actor"],
            f"[{style}]{state}[/]" if style else state,
            str(a["restarts_total"]),
            str(a["polls"]),
            str(delivered.get(a["device_id"], 0)),
            f"{error.get('code', '')}: {error.get('message', '')}"[:60] if error else "-",
        )
    return table


async def run_demo(
    seconds: float | None,
    *,
    show: Callable[[Any], None] | None = None,
    state_dir: Path | None = None,
    handle_signals: bool = False,
    announce: Callable[[str], None] | None = None,
) -> Summary:
    """Run the demo for ``seconds`` (None: until stopped); return its summary.
    ``handle_signals``: SIGINT/SIGTERM end it early, cleanly (the command line's case).
    ``announce`` is told the status page's URL once the runtime serves."""
    with tempfile.TemporaryDirectory() as scratch:
        base = state_dir or Path(scratch)
        core = DevCore(base / "core.db", container_id="demo-container", token=TOKEN)
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(core.serve)
            env = {
                "PIPHI_CORE_BASE_URL": core.data_url,
                "PIPHI_CONTAINER_ID": core.container_id,
                "PIPHI_INTEGRATION_INTERNAL_TOKEN": TOKEN,
                "PIPHI_STATE_DIR": str(base / "runtime"),
                "PIPHI_CONFIG_SNAPSHOT_PATH": str(base / "no-snapshot.json"),
            }
            urls = await nursery.start(
                partial(serve, integration, env=env, host="127.0.0.1", port=0)
            )
            for device in DEVICES:
                await core.put_config(device)
            await core.push(urls[0])
            page = f"{urls[0]}/status"
            if announce is not None:
                announce(f"status page: {page} (it asks for the integration token: {TOKEN})")
            if handle_signals:
                nursery.start_soon(_stop_on_signal, stop)
            async with httpx.AsyncClient(
                base_url=urls[0], headers=core.runtime_headers(), timeout=10
            ) as http:
                started = trio.current_time()
                with trio.move_on_after(seconds if seconds is not None else float("inf")):
                    while not stop.is_set():
                        await trio.sleep(1)
                        if show is not None:
                            actors, delivered = await snapshot_view(http, core)
                            elapsed = trio.current_time() - started
                            show(render(actors, delivered, elapsed, page))
                actors, delivered = await snapshot_view(http, core)
            events = tuple(
                f"{e['device_id']}:{e['type']}"
                for e in await core.events()
                if e["type"] in ("device.unavailable", "device.available")
            )
            nursery.cancel_scope.cancel()
    return Summary(
        devices=len(actors),
        readings=delivered,
        restarts=sum(a["restarts_total"] for a in actors),
        events=events,
    )


async def _stop_on_signal(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            stop.set()
            return


def main() -> int:
    # The table shows each device's last error; tracebacks would only scroll it away.
    logging.basicConfig(level=logging.CRITICAL)
    seconds_env = os.environ.get("DEMO_SECONDS")
    seconds = float(seconds_env) if seconds_env else None
    if sys.stdout.isatty():
        from rich.live import Live

        with Live(refresh_per_second=2) as live:
            run = partial(
                run_demo,
                seconds,
                show=live.update,
                handle_signals=True,
                announce=live.console.print,
            )
            summary = trio.run(run)
    else:
        from rich.console import Console

        console = Console(width=120)
        ticks = 0

        def every_five(table: Any) -> None:
            nonlocal ticks
            ticks += 1
            if ticks % 5 == 0:
                console.print(table)

        run = partial(
            run_demo, seconds, show=every_five, handle_signals=True, announce=console.print
        )
        summary = trio.run(run)
    print(summary.line())
    for event in summary.events:
        print(f"  event {event}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
