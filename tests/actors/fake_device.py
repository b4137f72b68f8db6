"""A fake LAN device for the HTTP JSON actor's tests: a real HTTP server on 127.0.0.1.

Plain trio + h11 (runtime.testing.H11Server, under FakeCore too), so every misbehaviour is
the test's choice: answer a status, send a body that is not JSON, take the request and
never answer, close the connection without answering, demand an auth header, or go away
altogether (its listener closed, its port kept for ``up()``). Payloads are served in
order, the last one repeating, so a test can script a series of observations.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import trio

from runtime.testing import Answer, H11Server

#: Shaped like Ambient Weather's /v1/devices answer: a list of stations, US units.
AMBIENT_PAYLOAD: list[dict[str, Any]] = [
    {
        "macAddress": "00:0E:C6:20:0F:7B",
        "lastData": {
            "dateutc": 1732297980000,
            "tempf": 68.0,
            "humidity": 55,
            "windspeedmph": 10.0,
            "windgustmph": 14.1,
            "winddir": 225,
            "baromrelin": 29.92,
            "baromabsin": 29.56,
            "hourlyrainin": 0.1,
            "dailyrainin": 0.32,
            "tempinf": 71.6,
            "humidityin": 41,
            "uv": 3,
            "solarradiation": 402.5,
            "battout": 1,
            "tz": "America/Los_Angeles",
            "date": "2024-11-22T17:53:00.000Z",
        },
        "info": {"name": "Backyard", "location": "Home"},
    }
]

#: Shaped like WeatherFlow's station observations, asked for in US units
#: (units_temp=f, units_wind=mph, units_pressure=inhg, units_precip=in, units_distance=mi).
WEATHERFLOW_PAYLOAD: dict[str, Any] = {
    "station_id": 12345,
    "station_name": "Hilltop",
    "elevation": 120.0,
    "obs": [
        {
            "timestamp": 1732297980,
            "air_temperature": 51.3,
            "barometric_pressure": 29.71,
            "sea_level_pressure": 30.12,
            "relative_humidity": 81,
            "precip": 0.02,
            "precip_accum_last_1hr": 0.05,
            "wind_avg": 7.6,
            "wind_gust": 12.3,
            "wind_direction": 310,
            "lightning_strike_count": 2,
            "lightning_strike_last_distance": 7.5,
            "uv": 0.4,
        }
    ],
    "units": {"units_temp": "f", "units_wind": "mph", "units_distance": "mi"},
    "status": {"status_code": 0, "status_message": "SUCCESS"},
}


@attrs.define
class Request:
    method: str
    target: str
    headers: dict[str, str]
    """Lower-cased names."""


class FakeDevice(H11Server):
    """Run with ``await nursery.start(device.serve)``; then ``device.url`` is its URL."""

    def __init__(self, *payloads: Any, path: str = "/api/observations") -> None:
        super().__init__()
        self.payloads: list[Any] = list(payloads) or [AMBIENT_PAYLOAD]
        """Served in order, one per request; the last one repeats."""
        self.path = path
        self.status = 200
        """Answer this status instead; non-2xx answers carry a small JSON error body."""
        self.headers: list[tuple[str, str]] = []
        """Extra response headers (a redirect's Location)."""
        self.body: bytes | None = None
        """Send these bytes instead of the payload (say, something that is not JSON)."""
        self.hang = False
        """Read the request, then never answer."""
        self.drop = False
        """Close the connection without answering."""
        self.required: tuple[str, str] | None = None
        """(header, value) a request must carry, else 401."""
        self.requests: list[Request] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def healthy(self) -> None:
        """Back to answering the payloads normally."""
        self.status, self.body, self.hang, self.drop = 200, None, False, False

    def _next_payload(self) -> Any:
        return self.payloads.pop(0) if len(self.payloads) > 1 else self.payloads[0]

    async def respond(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> Answer | None:
        self.requests.append(Request(method, target, headers))
        if self.drop:
            return None
        if self.hang:
            await trio.sleep_forever()
        status = self.status
        if self.required is not None:
            name, value = self.required
            if headers.get(name.lower()) != value:
                status = 401
        if status != 200:
            data = json.dumps({"error": f"status {status}"}).encode()
        elif self.body is not None:
            data = self.body
        else:
            data = json.dumps(self._next_payload()).encode()
        return status, [("content-type", "application/json"), *self.headers], data
