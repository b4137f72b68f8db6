"""A fake LAN device for the HTTP JSON actor's tests: a real HTTP server on 127.0.0.1.

Plain trio + h11, like tests/fakecore.py, so every misbehaviour is the test's choice:
answer a status, send a body that is not JSON, take the request and never answer, close
the connection without answering, demand an auth header, or go away altogether (its
listener closed, its port kept for ``up()``). Payloads are served in order, the last one
repeating, so a test can script a series of observations.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import h11
import trio

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


class FakeDevice:
    """Run with ``await nursery.start(device.serve)``; then ``device.url`` is its URL."""

    def __init__(self, *payloads: Any, path: str = "/api/observations") -> None:
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
        self.port = 0
        self._listeners: list[trio.SocketListener] = []
        self._nursery: trio.Nursery | None = None
        self._accepting = trio.CancelScope()
        self._conns: set[trio.SocketStream] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def healthy(self) -> None:
        """Back to answering the payloads normally."""
        self.status, self.body, self.hang, self.drop = 200, None, False, False

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._listen()
            task_status.started()
            await trio.sleep_forever()

    async def down(self) -> None:
        """Refuse connections from now on, like a device that was unplugged."""
        self._accepting.cancel()
        for listener in self._listeners:
            await listener.aclose()
        self._listeners = []
        for conn in list(self._conns):
            await conn.aclose()

    async def up(self) -> None:
        await self._listen()

    async def _listen(self) -> None:
        assert self._nursery is not None
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        self._listeners = listeners
        self._accepting = scope = trio.CancelScope()
        nursery = self._nursery

        async def accept() -> None:
            with scope:
                await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

        nursery.start_soon(accept)

    def _next_payload(self) -> Any:
        return self.payloads.pop(0) if len(self.payloads) > 1 else self.payloads[0]

    async def _handle(self, stream: trio.SocketStream) -> None:
        self._conns.add(stream)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await _next(conn, stream, h11.Request)
                if request is None:
                    return
                while True:  # a GET has no body worth keeping; read up to its end
                    event = await _next(conn, stream, (h11.Data, h11.EndOfMessage))
                    if event is None:
                        return
                    if isinstance(event, h11.EndOfMessage):
                        break
                headers = {k.decode().lower(): v.decode() for k, v in request.headers}
                self.requests.append(
                    Request(request.method.decode(), request.target.decode(), headers)
                )
                if self.drop:
                    return
                if self.hang:
                    await trio.sleep_forever()
                await self._answer(conn, stream, headers)
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            return
        finally:
            self._conns.discard(stream)
            await stream.aclose()

    async def _answer(
        self, conn: h11.Connection, stream: trio.SocketStream, headers: dict[str, str]
    ) -> None:
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
        response_headers = [
            ("content-type", "application/json"),
            ("content-length", str(len(data))),
            *self.headers,
        ]
        await stream.send_all(conn.send(h11.Response(status_code=status, headers=response_headers)))
        await stream.send_all(conn.send(h11.Data(data=data)))
        await stream.send_all(conn.send(h11.EndOfMessage()))


async def _next(conn: h11.Connection, stream: trio.SocketStream, kinds: Any) -> Any:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            conn.receive_data(data)
            if not data and conn.their_state is h11.CLOSED:
                return None
            continue
        if isinstance(event, h11.ConnectionClosed):
            return None
        assert isinstance(event, kinds), event
        return event
