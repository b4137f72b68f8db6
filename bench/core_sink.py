"""A fast fake PiPhi Core for delivery benchmarks: trio + h11, run as its own process.

Two listeners on 127.0.0.1, both port 0 by default; the bound ports are printed on stdout
as one JSON line, ``{"data_port": P, "admin_port": Q, "pid": N}``, once both listen.

Data port (what a runtime posts to; it can be taken down):

- ``POST /api/v2/integrations/telemetry``: counted and de-duplicated by the body's
  ``telemetry_id`` when present, else by ``(device_id, metrics.seq)``. Per device it keeps
  the highest ``seq`` and the set of seqs seen, so ``gaps`` (seqs below the highest that
  never arrived; seqs start at 1) count lost readings without knowing the sender.
- ``POST /api/v2/events/ingest``: counted.
- ``GET /api/v2/integrations/config/fetch/all/by/container/internal``: ``[]``.

Every 2xx is ``200 {}``. Connections are kept alive (one h11 cycle per request).

Admin port (never taken down):

- ``GET /admin/stats[?timeline=1][&devices=1]``: the counters as JSON; ``timeline`` adds
  unique telemetry per second since the last reset, ``devices`` each device's highest
  seq and how many of its seqs arrived.
- ``POST /admin/reset``: zero every counter.
- ``POST /admin/down?seconds=S&mode=refuse|503``: ``refuse`` closes the data listener and
  aborts open data connections with a reset, so connects get ECONNREFUSED (Core gone);
  ``503`` keeps serving and answers 503 with ``Retry-After: 1`` (Core overloaded). The data
  port comes back by itself after S seconds.
- ``POST /admin/up``: end a down period now.

The process ends on SIGTERM/SIGINT, after ``--max-seconds``, and with
``--exit-on-stdin-eof`` when its standard input closes (so it never outlives the bench
that started it, even if that one is killed).

Usage: python bench/core_sink.py [--port 0] [--admin-port 0] [--max-seconds 3600]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import struct
import sys
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
import trio

HOST = "127.0.0.1"
TELEMETRY_PATH = b"/api/v2/integrations/telemetry"
EVENTS_PATH = b"/api/v2/events/ingest"
CONFIG_FETCH_PATH = b"/api/v2/integrations/config/fetch/all/by/container/internal"
DOWN_MODES = ("refuse", "503")
MAX_BODY = 1 << 20

_JSON = [(b"content-type", b"application/json")]
_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 503: b"Service Unavailable"}
_LINGER_RESET = struct.pack("ii", 1, 0)  # close() sends RST instead of FIN


class Stats:
    """Every counter of the sink; pure bookkeeping, no I/O."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.reset_at = time.time()
        self.requests = 0
        self.connections = 0  # data-port TCP connections accepted
        self.telemetry = 0  # telemetry posts answered 200
        self.unique = 0
        self.duplicates = 0
        self.without_seq = 0  # telemetry with no int metrics.seq
        self.events = 0
        self.bad_requests = 0
        self.answered_503 = 0
        self.missing_container = 0  # telemetry or events without X-Container-Id
        self.first_unique_at: float | None = None
        self.last_unique_at: float | None = None
        self.ids: set[str] = set()
        self.seqs: dict[str, set[int]] = {}
        self.max_seq: dict[str, int] = {}
        self.per_second: dict[int, int] = {}
        self.down_periods: list[dict[str, Any]] = []

    def telemetry_body(self, body: bytes, now: float) -> int:
        try:
            payload = json.loads(body)
            device_id = str(payload["device_id"])
            metrics = payload.get("metrics") or {}
            telemetry_id = payload.get("telemetry_id")
        except (ValueError, KeyError, TypeError, AttributeError):
            self.bad_requests += 1
            return 400
        self.telemetry += 1
        seq = metrics.get("seq") if isinstance(metrics, dict) else None
        if type(seq) is not int:
            seq = None
            self.without_seq += 1
        if telemetry_id is not None:
            key = str(telemetry_id)
            if key in self.ids:
                self.duplicates += 1
                return 200
            self.ids.add(key)
            if seq is not None:
                self.seqs.setdefault(device_id, set()).add(seq)
        elif seq is not None:
            seen = self.seqs.setdefault(device_id, set())
            if seq in seen:
                self.duplicates += 1
                return 200
            seen.add(seq)
        if seq is not None and seq > self.max_seq.get(device_id, 0):
            self.max_seq[device_id] = seq
        self.unique += 1
        if self.first_unique_at is None:
            self.first_unique_at = now
        self.last_unique_at = now
        second = int(now - self.reset_at)
        self.per_second[second] = self.per_second.get(second, 0) + 1
        return 200

    def snapshot(self, *, timeline: bool, devices: bool, down: dict[str, Any]) -> dict[str, Any]:
        gaps = sum(top - len(self.seqs.get(dev, ())) for dev, top in self.max_seq.items())
        usage = resource.getrusage(resource.RUSAGE_SELF)
        out: dict[str, Any] = {
            "now": time.time(),
            "reset_at": self.reset_at,
            "requests": self.requests,
            "connections": self.connections,
            "telemetry": self.telemetry,
            "unique": self.unique,
            "duplicates": self.duplicates,
            "without_seq": self.without_seq,
            "events": self.events,
            "bad_requests": self.bad_requests,
            "answered_503": self.answered_503,
            "missing_container": self.missing_container,
            "devices": len(self.max_seq),
            "sum_max_seq": sum(self.max_seq.values()),
            "gaps": gaps,
            "first_unique_at": self.first_unique_at,
            "last_unique_at": self.last_unique_at,
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "down": down,
            "down_periods": self.down_periods,
        }
        if timeline:
            out["timeline"] = sorted(self.per_second.items())
        if devices:
            out["per_device"] = {
                dev: {"max_seq": top, "seqs_seen": len(self.seqs.get(dev, ()))}
                for dev, top in self.max_seq.items()
            }
        return out


class Sink:
    def __init__(self, data_port: int, admin_port: int) -> None:
        self.stats = Stats()
        self.data_port = data_port
        self.admin_port = admin_port
        self.down_mode: str | None = None
        self.down_until = 0.0
        self.down_token = 0
        self.up = trio.Event()
        self.up.set()
        self.data_scope = trio.CancelScope()
        self.data_streams: set[trio.SocketStream] = set()
        self.nursery: trio.Nursery | None = None

    # -- down and up ----------------------------------------------------------------
    def down_state(self) -> dict[str, Any]:
        return {
            "is_down": self.down_mode is not None,
            "mode": self.down_mode,
            "until": self.down_until if self.down_mode else None,
        }

    def go_down(self, seconds: float, mode: str) -> None:
        self.go_up()
        assert self.nursery is not None
        self.down_mode = mode
        self.down_until = time.time() + seconds
        self.down_token += 1
        self.stats.down_periods.append({"mode": mode, "start": time.time(), "end": None})
        if mode == "refuse":
            self.up = trio.Event()
            for stream in self.data_streams:
                try:
                    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                except OSError:
                    pass
            self.data_scope.cancel()
        self.nursery.start_soon(self._up_after, seconds, self.down_token)

    async def _up_after(self, seconds: float, token: int) -> None:
        await trio.sleep(seconds)
        if token == self.down_token:
            self.go_up()

    def go_up(self) -> None:
        if self.down_mode is None:
            return
        self.down_mode = None
        self.down_token += 1
        if self.stats.down_periods:
            self.stats.down_periods[-1]["end"] = time.time()
        self.up.set()

    # -- listeners ------------------------------------------------------------------
    async def data_plane(self, task_status: trio.TaskStatus[None]) -> None:
        started = False
        while True:  # one pass per "up" period; ends with the process
            await self.up.wait()
            listeners = await self._bind_data()
            self.data_scope = trio.CancelScope()
            with self.data_scope:
                async with trio.open_nursery() as nursery:
                    await nursery.start(trio.serve_listeners, self.serve_data, listeners)
                    if not started:
                        started = True
                        task_status.started()

    async def _bind_data(self) -> list[trio.SocketListener]:
        for attempt in range(50):  # the port may linger for a moment after a down period
            try:
                listeners = await trio.open_tcp_listeners(self.data_port, host=HOST, backlog=4096)
            except OSError:
                if attempt == 49:
                    raise
                await trio.sleep(0.05)
            else:
                self.data_port = listeners[0].socket.getsockname()[1]
                return listeners
        raise AssertionError("unreachable")

    async def serve_data(self, stream: trio.SocketStream) -> None:
        self.stats.connections += 1
        self.data_streams.add(stream)
        try:
            await self.serve(stream, admin=False)
        finally:
            self.data_streams.discard(stream)

    async def serve_admin(self, stream: trio.SocketStream) -> None:
        await self.serve(stream, admin=True)

    async def serve(self, stream: trio.SocketStream, *, admin: bool) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_BODY)
        method = target = b""
        body: list[bytes] = []
        has_container = False
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Data):
                    body.append(event.data)
                elif isinstance(event, h11.Request):
                    method, target, body = event.method, event.target, []
                    has_container = any(
                        name == b"x-container-id" and value for name, value in event.headers
                    )
                elif isinstance(event, h11.EndOfMessage):
                    self.stats.requests += 1
                    if admin:
                        status, payload, headers = self.admin(method, target)
                    else:
                        status, payload, headers = self.data(
                            method, target, b"".join(body), has_container
                        )
                    await stream.send_all(
                        conn.send(
                            h11.Response(
                                status_code=status,
                                headers=[*headers, (b"content-length", b"%d" % len(payload))],
                                reason=_REASONS.get(status, b""),
                            )
                        )
                        + conn.send(h11.Data(data=payload))
                        + conn.send(h11.EndOfMessage())
                    )
                    if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                        break
                    conn.start_next_cycle()
                else:  # ConnectionClosed, or PAUSED (cannot happen: one cycle at a time)
                    break
        except h11.RemoteProtocolError:
            self.stats.bad_requests += 1
            if conn.our_state is h11.IDLE or conn.our_state is h11.SEND_RESPONSE:
                try:
                    await stream.send_all(
                        conn.send(
                            h11.Response(
                                status_code=400,
                                headers=[(b"content-length", b"0"), (b"connection", b"close")],
                            )
                        )
                        + conn.send(h11.EndOfMessage())
                    )
                except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
                    pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    # -- routes ---------------------------------------------------------------------
    def data(
        self, method: bytes, target: bytes, body: bytes, has_container: bool
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        path = target.split(b"?", 1)[0]
        if method == b"POST" and path in (TELEMETRY_PATH, EVENTS_PATH):
            if self.down_mode == "503":
                self.stats.answered_503 += 1
                return 503, b'{"error":"unavailable"}', [*_JSON, (b"retry-after", b"1")]
            if not has_container:
                self.stats.missing_container += 1
            if path == TELEMETRY_PATH:
                status = self.stats.telemetry_body(body, time.time())
            else:
                status = 200
                self.stats.events += 1
            return status, b"{}" if status == 200 else b'{"error":"bad body"}', _JSON
        if method == b"GET" and path == CONFIG_FETCH_PATH:
            return 200, b"[]", _JSON
        return 404, b'{"error":"not found"}', _JSON

    def admin(self, method: bytes, target: bytes) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        parts = urlsplit(target.decode("latin-1"))
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        path = parts.path
        if method == b"GET" and path == "/admin/stats":
            timeline, devices = (
                query.get(key, "0") not in ("", "0", "false") for key in ("timeline", "devices")
            )
            body = self.stats.snapshot(timeline=timeline, devices=devices, down=self.down_state())
            return 200, json.dumps(body).encode(), _JSON
        if method == b"GET" and path == "/health":
            return 200, b'{"status":"ok"}', _JSON
        if method == b"POST" and path == "/admin/reset":
            self.stats.reset()
            return 200, b"{}", _JSON
        if method == b"POST" and path == "/admin/down":
            mode = query.get("mode", "refuse")
            try:
                seconds = float(query.get("seconds", "10"))
            except ValueError:
                seconds = -1.0
            if mode not in DOWN_MODES or not 0 < seconds <= 3600:
                return 400, b'{"error":"need seconds in (0, 3600] and mode refuse|503"}', _JSON
            self.go_down(seconds, mode)
            return 200, json.dumps(self.down_state()).encode(), _JSON
        if method == b"POST" and path == "/admin/up":
            self.go_up()
            return 200, json.dumps(self.down_state()).encode(), _JSON
        return 404, b'{"error":"not found"}', _JSON


async def watch_stdin(scope: trio.CancelScope) -> None:
    """Cancel everything once stdin reaches EOF: the bench that started us is gone."""
    stream = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with stream:
        while await stream.receive_some(4096):
            pass
    scope.cancel()


async def main_async(args: argparse.Namespace) -> None:
    sink = Sink(args.port, args.admin_port)
    with trio.move_on_after(args.max_seconds) as scope:
        async with trio.open_nursery() as nursery:
            sink.nursery = nursery
            admin = await trio.open_tcp_listeners(args.admin_port, host=HOST)
            sink.admin_port = admin[0].socket.getsockname()[1]
            await nursery.start(trio.serve_listeners, sink.serve_admin, admin)
            await nursery.start(sink.data_plane)
            line = {"data_port": sink.data_port, "admin_port": sink.admin_port, "pid": os.getpid()}
            print(json.dumps(line), flush=True)
            if args.exit_on_stdin_eof:
                nursery.start_soon(watch_stdin, scope)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=0, help="data port (0: any free one)")
    parser.add_argument("--admin-port", type=int, default=0, help="admin port (0: any free one)")
    parser.add_argument("--max-seconds", type=float, default=3600.0, help="exit after this")
    parser.add_argument("--exit-on-stdin-eof", action="store_true")
    args = parser.parse_args()
    try:
        trio.run(main_async, args)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
