"""A fast fake PiPhi Core for delivery benchmarks: ``runtime.testing.FakeCore``, run as its
own process, counting through its ``store()`` seam.

Two listeners on 127.0.0.1, both port 0 by default; the bound ports are printed on stdout
as one JSON line, ``{"data_port": P, "admin_port": Q, "pid": N}``, once both listen.

Data port (what a runtime posts to; it can be taken down):

- ``POST /api/v2/integrations/telemetry``: counted and de-duplicated by the body's
  ``telemetry_id`` when present, else by ``(device_id, metrics.seq)``. Per device it keeps
  the highest ``seq`` and the set of seqs seen, so ``gaps`` (seqs below the highest that
  never arrived; seqs start at 1) count lost readings without knowing the sender.
  Each new reading's age on arrival (now minus its ``timestamp``, when that parses) is
  counted too: ``ages`` in the stats holds how many had one, how many arrived within
  ``ON_TIME`` (2 s), the largest, and a histogram with the bounds in ``AGE_BOUNDS``.
- ``POST /api/v2/events/ingest``: counted.
- ``GET /api/v2/integrations/config/fetch/all/by/container/internal``: ``[]``.

Every 2xx is ``200 {}``. Connections are kept alive. The data port frames HTTP/1.1 with a
hand-written parser for the common case (heads with ``Content-Length`` bodies, several
pipelined requests in one read answered with one write, ``Connection: close`` honoured,
the fixed answers pre-built as bytes); a request outside it (chunked, ``Expect``, not
HTTP/1.1, a malformed or duplicated header, an oversized head) hands the connection to h11
from there on. ``BENCH_SINK_H11=1`` (or ``--h11``) frames every request with h11 as
``runtime.testing.FakeCore`` does (one h11 cycle and one write per request), to compare.
Either way the answers come from ``FakeCore.respond`` (faults included) and the counting
from ``store()``. The sink keeps no payloads in memory (``limit=0``), only the counters
below.

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

Usage: python bench/core_sink.py [--port 0] [--admin-port 0] [--max-seconds 3600] [--h11]
"""

from __future__ import annotations

import argparse
import bisect
import functools
import json
import os
import resource
import sys
import time
from collections.abc import Mapping
from datetime import datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import trio

from runtime._fakecore import MAX_BODY
from runtime.testing import Answer, FakeCore, H11Server, Rejected, Trouble

HOST = "127.0.0.1"
DOWN_MODES = ("refuse", "503")
PARSERS = ("fast", "h11")

_JSON = [("content-type", "application/json")]
_PROBLEM = [("content-type", "application/problem+json")]
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}  # as FakeCore's
#: A reading is on time when it arrived within this many seconds of its ``timestamp``.
ON_TIME = 2.0
#: Upper bounds (s) of the arrival-age histogram's buckets; one more bucket holds the rest.
AGE_BOUNDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class Stats:
    """The sink's own counters (sequence bookkeeping); pure, no I/O."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.reset_at = time.time()
        self.telemetry = 0  # telemetry posts answered 200
        self.unique = 0
        self.duplicates = 0
        self.without_seq = 0  # telemetry with no int metrics.seq
        self.events = 0
        self.missing_container = 0  # telemetry or events without X-Container-Id
        self.first_unique_at: float | None = None
        self.last_unique_at: float | None = None
        self.ids: set[str] = set()
        self.seqs: dict[str, set[int]] = {}
        self.max_seq: dict[str, int] = {}
        self.per_second: dict[int, int] = {}
        self.down_periods: list[dict[str, Any]] = []
        self.aged = 0  # new readings whose timestamp parsed
        self.on_time = 0  # ... of which arrived within ON_TIME of it
        self.age_max = 0.0
        self.age_buckets = [0] * (len(AGE_BOUNDS) + 1)

    def telemetry_payload(self, payload: dict[str, Any], now: float) -> bool:
        """Count one telemetry payload; whether it is new. ``Rejected`` when unusable."""
        try:
            device_id = str(payload["device_id"])
            metrics = payload.get("metrics") or {}
        except KeyError:
            raise Rejected("telemetry needs device_id", 400) from None
        telemetry_id = payload.get("telemetry_id")
        self.telemetry += 1
        seq = metrics.get("seq") if isinstance(metrics, dict) else None
        if type(seq) is not int:
            seq = None
            self.without_seq += 1
        if telemetry_id is not None:
            key = str(telemetry_id)
            if key in self.ids:
                self.duplicates += 1
                return False
            self.ids.add(key)
            if seq is not None:
                self.seqs.setdefault(device_id, set()).add(seq)
        elif seq is not None:
            seen = self.seqs.setdefault(device_id, set())
            if seq in seen:
                self.duplicates += 1
                return False
            seen.add(seq)
        if seq is not None and seq > self.max_seq.get(device_id, 0):
            self.max_seq[device_id] = seq
        self.unique += 1
        self._age(payload.get("timestamp"), now)
        if self.first_unique_at is None:
            self.first_unique_at = now
        self.last_unique_at = now
        second = int(now - self.reset_at)
        self.per_second[second] = self.per_second.get(second, 0) + 1
        return True

    def _age(self, timestamp: Any, now: float) -> None:
        """Count a new reading's age on arrival (the sender's clock is this machine's)."""
        try:
            age = now - datetime.fromisoformat(timestamp).timestamp()
        except (TypeError, ValueError):
            return
        self.aged += 1
        if age <= ON_TIME:
            self.on_time += 1
        if age > self.age_max:
            self.age_max = age
        self.age_buckets[bisect.bisect_left(AGE_BOUNDS, age)] += 1

    def snapshot(self, *, timeline: bool, devices: bool) -> dict[str, Any]:
        gaps = sum(top - len(self.seqs.get(dev, ())) for dev, top in self.max_seq.items())
        usage = resource.getrusage(resource.RUSAGE_SELF)
        out: dict[str, Any] = {
            "now": time.time(),
            "reset_at": self.reset_at,
            "telemetry": self.telemetry,
            "unique": self.unique,
            "duplicates": self.duplicates,
            "without_seq": self.without_seq,
            "events": self.events,
            "missing_container": self.missing_container,
            "devices": len(self.max_seq),
            "sum_max_seq": sum(self.max_seq.values()),
            "gaps": gaps,
            "first_unique_at": self.first_unique_at,
            "last_unique_at": self.last_unique_at,
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "down_periods": self.down_periods,
            "ages": {
                "aged": self.aged,
                "on_time": self.on_time,
                "on_time_s": ON_TIME,
                "max": round(self.age_max, 3),
                "bounds": list(AGE_BOUNDS),
                "buckets": list(self.age_buckets),
            },
        }
        if timeline:
            out["timeline"] = sorted(self.per_second.items())
        if devices:
            out["per_device"] = {
                dev: {"max_seq": top, "seqs_seen": len(self.seqs.get(dev, ()))}
                for dev, top in self.max_seq.items()
            }
        return out


#: Bytes read at once from a data connection.
RECEIVE = 65536
#: A head not complete within this many bytes goes to h11 (which refuses it past MAX_BODY).
MAX_HEAD = 65536
_END_OF_HEAD = b"\r\n\r\n"
#: Heads with one of these are left to h11 (bodies not framed by Content-Length, 100-continue).
_UNCOMMON = (b"transfer-encoding", b"expect", b"upgrade")
_OK_ANSWER = (200, _JSON, b"{}")


@functools.lru_cache(maxsize=64)
def _render(status: int, extra: tuple[tuple[str, str], ...], data: bytes, close: bool) -> bytes:
    """The bytes h11 would send for an ``Answer`` (same header order and case)."""
    reason = _REASONS.get(status, b"")
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    for name, value in (*extra, ("content-length", str(len(data)))):
        lines.append(f"{name}: {value}\r\n".encode("latin-1"))
    if close:
        lines.append(b"Connection: close\r\n")
    return b"".join(lines) + b"\r\n" + data


#: The fixed answer to every accepted payload, pre-built (kept alive / closing).
OK = _render(200, tuple(_JSON), b"{}", False)
OK_CLOSE = _render(200, tuple(_JSON), b"{}", True)


def parse_head(head: bytes) -> tuple[bytes, bytes, dict[bytes, bytes]] | None:
    """(method, target, headers with lower-cased names) of a request head without its
    blank line, or None when it is not the common case (left to h11)."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1" or not parts[0].isalpha():
        return None
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        key = name.lower()
        if not sep or not name or name[-1:] in b" \t" or line[:1] in b" \t" or key in headers:
            return None  # malformed, folded or repeated: h11 decides
        headers[key] = value.strip(b" \t")
    if any(key in headers for key in _UNCOMMON):
        return None
    length = headers.get(b"content-length", b"0")
    if not length.isdigit():
        return None
    return parts[0], parts[1], headers


class CountingCore(FakeCore):
    """The data port: FakeCore (paths, faults), payloads only counted; HTTP framed by the
    hand-written parser (``parser="fast"``) or by FakeCore's h11 loop (``"h11"``)."""

    def __init__(self, stats: Stats, port: int, parser: str = "fast") -> None:
        super().__init__(limit=0, host=HOST, port=port, backlog=4096)
        if parser not in PARSERS:
            raise ValueError(f"parser is one of {PARSERS}")
        self.stats = stats
        self.parser = parser

    async def serve_stream(self, stream: trio.abc.Stream) -> None:
        """Answer the requests on one connection, in order, until it closes: every
        complete request of a read is answered, then their answers go in one write."""
        if self.parser == "h11":
            await self.serve_h11(stream)
            return
        buffer = b""
        while True:
            data = await stream.receive_some(RECEIVE)
            if not data:
                return
            if type(data) is not bytes:  # a memory stream's bytearray (tests)
                data = bytes(data)
            buffer = buffer + data if buffer else data
            out: list[bytes] = []
            pos, size = 0, len(buffer)
            while pos < size:
                end = buffer.find(_END_OF_HEAD, pos)
                if end < 0:
                    if size - pos > MAX_HEAD:
                        await self._to_h11(stream, out, buffer[pos:])
                        return
                    break
                request = parse_head(buffer[pos:end])
                if request is None:
                    await self._to_h11(stream, out, buffer[pos:])
                    return
                method, target, headers = request
                length = int(headers.get(b"content-length", b"0"))
                if length > MAX_BODY:
                    out.append(_render(413, tuple(_PROBLEM), _too_large(), True))
                    await stream.send_all(b"".join(out))
                    return
                start = end + 4
                if start + length > size:
                    break  # the body is not all here yet
                pos = start + length
                close = b"close" in headers.get(b"connection", b"").lower()
                if out and self.trouble.mode != "none":
                    await stream.send_all(b"".join(out))  # answers before a slow one
                    out = []
                answer = await self.respond(
                    method.decode("ascii"),
                    target.decode("latin-1"),
                    {k.decode("latin-1"): v.decode("latin-1") for k, v in headers.items()},
                    buffer[start:pos],
                )
                if answer is None:  # dropped: close without an answer
                    if out:
                        await stream.send_all(b"".join(out))
                    return
                if answer == _OK_ANSWER:
                    out.append(OK_CLOSE if close else OK)
                else:
                    status, extra, body = answer
                    out.append(_render(status, tuple(extra), body, close))
                if close:
                    await stream.send_all(b"".join(out))
                    return
            if out:
                await stream.send_all(b"".join(out))
            buffer = buffer[pos:]

    async def _to_h11(self, stream: trio.abc.Stream, out: list[bytes], rest: bytes) -> None:
        """Send the answers so far, then frame the rest of the connection with h11."""
        if out:
            await stream.send_all(b"".join(out))
        await self.serve_h11(stream, rest)

    async def store(self, kind: str, payload: dict[str, Any], headers: Mapping[str, str]) -> bool:
        if not headers.get("x-container-id"):
            self.stats.missing_container += 1
        if kind == "event":
            self.stats.events += 1
            return True
        return self.stats.telemetry_payload(payload, time.time())


class Sink(H11Server):
    """The admin port (never taken down), driving the data port's counters and faults."""

    def __init__(self, data_port: int, admin_port: int, parser: str = "fast") -> None:
        super().__init__(host=HOST, port=admin_port)
        self.stats = Stats()
        self.core = CountingCore(self.stats, data_port, parser)
        self.down_mode: str | None = None
        self.down_until = 0.0  # wall time

    # -- down and up ----------------------------------------------------------------
    def down_state(self) -> dict[str, Any]:
        if self.down_mode is not None and self.core.trouble.mode == "none":
            self._ended(self.down_until)  # the trouble ended by itself
        return {
            "is_down": self.down_mode is not None,
            "mode": self.down_mode,
            "until": self.down_until if self.down_mode else None,
        }

    def go_down(self, seconds: float, mode: str) -> None:
        self.go_up()
        self.down_mode = mode
        self.down_until = time.time() + seconds
        self.stats.down_periods.append({"mode": mode, "start": time.time(), "end": None})
        until = trio.current_time() + seconds
        self.core.set_trouble(Trouble("refuse" if mode == "refuse" else "503", until=until))

    def go_up(self) -> None:
        if self.down_mode is not None:
            self.core.set_trouble(Trouble())
            self._ended(time.time())

    def _ended(self, at: float) -> None:
        self.down_mode = None
        if self.stats.down_periods and self.stats.down_periods[-1]["end"] is None:
            self.stats.down_periods[-1]["end"] = min(at, time.time())

    # -- routes ---------------------------------------------------------------------
    async def respond(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> Answer | None:
        parts = urlsplit(target)
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        path = parts.path
        if method == "GET" and path == "/admin/stats":
            timeline, devices = (
                query.get(key, "0") not in ("", "0", "false") for key in ("timeline", "devices")
            )
            return _json(self.snapshot(timeline=timeline, devices=devices))
        if method == "GET" and path == "/health":
            return _json({"status": "ok"})
        if method == "POST" and path == "/admin/reset":
            self.stats.reset()
            self.core.clear()
            return _json({})
        if method == "POST" and path == "/admin/down":
            mode = query.get("mode", "refuse")
            try:
                seconds = float(query.get("seconds", "10"))
            except ValueError:
                seconds = -1.0
            if mode not in DOWN_MODES or not 0 < seconds <= 3600:
                return _json({"error": "need seconds in (0, 3600] and mode refuse|503"}, 400)
            self.go_down(seconds, mode)
            return _json(self.down_state())
        if method == "POST" and path == "/admin/up":
            self.go_up()
            return _json(self.down_state())
        return _json({"error": "not found"}, 404)

    def snapshot(self, *, timeline: bool, devices: bool) -> dict[str, Any]:
        core = self.core
        return {
            **self.stats.snapshot(timeline=timeline, devices=devices),
            "requests": core.requests,
            "connections": core.connections,  # data-port TCP connections accepted
            "bad_requests": core.bad_requests + core.protocol_errors,
            "answered_503": core.overloaded,
            "down": self.down_state(),
            "parser": core.parser,
        }


def _json(body: Any, status: int = 200) -> Answer:
    return status, _JSON, json.dumps(body).encode()


def _too_large() -> bytes:
    detail = f"bodies are {MAX_BODY} bytes at most"
    return json.dumps({"type": "about:blank", "status": 413, "detail": detail}).encode()


async def watch_stdin(scope: trio.CancelScope) -> None:
    """Cancel everything once stdin reaches EOF: the bench that started us is gone."""
    stream = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with stream:
        while await stream.receive_some(4096):
            pass
    scope.cancel()


async def main_async(args: argparse.Namespace) -> None:
    sink = Sink(args.port, args.admin_port, "h11" if args.h11 else "fast")
    with trio.move_on_after(args.max_seconds) as scope:
        async with trio.open_nursery() as nursery:
            await nursery.start(sink.serve)
            await nursery.start(sink.core.serve)
            line = {
                "data_port": sink.core.port,
                "admin_port": sink.port,
                "pid": os.getpid(),
                "parser": sink.core.parser,
            }
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
    parser.add_argument(
        "--h11",
        action="store_true",
        default=os.environ.get("BENCH_SINK_H11", "") not in ("", "0"),
        help="frame the data port's requests with h11 (as FakeCore), not the fast parser; "
        "also BENCH_SINK_H11=1",
    )
    args = parser.parse_args()
    try:
        trio.run(main_async, args)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
