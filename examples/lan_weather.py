"""A LAN weather station through the generic HTTP JSON actor, with a fake station to try it.

``integration`` is an ordinary integration of ``actors.http_json.HttpJsonActor``: each
config names a station URL and maps its JSON to metrics with unit conversions. Run the
whole thing (fake station, dev Core, runtime) with::

    python examples/lan_weather.py        # 30 s, or LAN_WEATHER_SECONDS=N

and serve it for real with ``piphi-runtime serve examples.lan_weather:integration``.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import trio
from hypercorn.trio import serve as hypercorn_serve
from quart import jsonify
from quart_trio import QuartTrio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.http_json import HttpJsonActor
from runtime import Integration
from runtime._serve import hypercorn_config

integration = Integration(
    id="lan-weather",
    name="LAN Weather",
    version="0.1.0",
    actor=HttpJsonActor,
    domain="climate",
    description="Weather stations on the LAN that serve their observations as JSON.",
)
app = integration.app()

STATION_KEY = "station-api-key-123"


def station_app() -> QuartTrio:
    """A fake station serving an Ambient-Weather-like document in US units, which drift
    with time; it wants ``X-Api-Key``."""
    station = QuartTrio("fake-station")
    started = trio.current_time

    @station.get("/api/observations")
    async def observations() -> Any:
        from quart import request

        if request.headers.get("X-Api-Key") != STATION_KEY:
            return jsonify({"error": "unauthorized"}), 401
        t = started()
        return jsonify(
            [
                {
                    "macAddress": "00:0E:C6:20:0F:7B",
                    "info": {"name": "Backyard"},
                    "lastData": {
                        "tempf": round(68.0 + 5 * math.sin(t / 60), 1),
                        "humidity": 55,
                        "baromrelin": 29.92,
                        "windspeedmph": round(8 + 8 * math.sin(t / 20) ** 2, 1),
                        "hourlyrainin": 0.02,
                    },
                }
            ]
        )

    return station


async def serve_station(task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    config = hypercorn_config("127.0.0.1:0", graceful_timeout=0.5)
    await hypercorn_serve(
        station_app(),
        config,
        task_status=task_status,  # type: ignore[arg-type]
    )


def station_config(config_id: str, url: str) -> dict[str, Any]:
    """The device config Core would hold for the station at ``url``."""
    return {
        "id": config_id,
        "url": url,
        "auth_header": "X-Api-Key",
        "auth_value": STATION_KEY,
        "poll_interval_seconds": 10,
        "metrics": [
            {"metric": "temperature_c", "path": "[0].lastData.tempf", "convert": "f_to_c"},
            {"metric": "humidity_pct", "path": "[0].lastData.humidity", "unit": "%"},
            {"metric": "pressure_hpa", "path": "[0].lastData.baromrelin", "convert": "inhg_to_hpa"},
            {"metric": "wind_ms", "path": "[0].lastData.windspeedmph", "convert": "mph_to_ms"},
            {
                "metric": "rain_mm_h",
                "path": "[0].lastData.hourlyrainin",
                "convert": "in_to_mm",
                "unit": "mm/h",
            },
        ],
        "thresholds": [{"metric": "wind_ms", "above": 6, "event_type": "high_wind"}],
    }


async def main(seconds: float) -> None:
    from runtime._serve import serve
    from runtime.devcore import DevCore

    with tempfile.TemporaryDirectory() as state:
        core = DevCore(Path(state) / "core.db")
        async with trio.open_nursery() as nursery:
            station = (await nursery.start(serve_station))[0]
            await nursery.start(core.serve)
            env = {
                "PIPHI_CORE_BASE_URL": core.data_url,
                "PIPHI_CONTAINER_ID": core.container_id,
                "PIPHI_INTEGRATION_INTERNAL_TOKEN": core.token or "",
                "PIPHI_STATE_DIR": str(Path(state) / "runtime"),
                "PIPHI_CONFIG_SNAPSHOT_PATH": str(Path(state) / "none.json"),
            }
            urls = await nursery.start(
                partial(serve, integration, env=env, host="127.0.0.1", port=0)
            )
            await core.put_config(station_config("backyard", f"{station}/api/observations"))
            print("sync:", (await core.push(urls[0]))["status"])
            await trio.sleep(seconds)
            for payload in await core.telemetry(device_id="backyard"):
                print(payload["timestamp"], payload["metrics"], payload["units"])
            for event in await core.events(device_id="backyard"):
                print("event", event["type"], event["data"])
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main, float(os.environ.get("LAN_WEATHER_SECONDS", "30")))
