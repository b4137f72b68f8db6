"""Telemetry payloads per second delivered to a fast local fake Core, three ways, one run.

- ``raw``: the floor. A bare httpx loop: 4 sender tasks, each doing sequential POSTs on one
  shared ``httpx.AsyncClient(limits=Limits(max_connections=4))`` under trio, fed from an
  unbounded channel, the same JSON bodies as the outbox (encoded per payload with
  ``json.dumps``). No retries, no spool.
- ``ours``: ``runtime.open_outbox`` on a ``CoreClient`` (4 connections), fed
  ``TelemetryRecord`` objects.
- ``kit``: a runtime built with piphi-runtime-kit-python 0.10.1 as its README recommends
  (bench/_kit_peer.py: FastAPI under uvicorn, ``schedule_telemetry_delivery`` per reading),
  in a venv of its own that this script creates on first use (``.bench/kit-venv``,
  ignored by git through ``.bench/.gitignore``), configured through its ``/config/sync``.

All three post to bench/core_sink.py (trio, its own process, a hand-written HTTP/1.1 parser;
``BENCH_SINK_H11=1``: h11 per request), which de-duplicates by ``telemetry_id`` (else by
device and ``metrics.seq``) and counts what arrived. The ``raw`` and ``ours`` children run
with CPython's garbage collector as ``serve`` tunes it (``runtime._collector.tuned``).

Capacity is the highest offered rate delivered completely: for ``raw`` and ``ours`` one
trio task offers payloads at a fixed rate (every 10 ms, round-robin over 100 devices with
a per-device seq) for the window; the step passes when every offered payload has reached
the sink within the drain period after the window. Rates step 250, 500, 1000, 2000, ...
up to the first failure, then bisect between the last pass and the first failure. For the
kit the offered rate is devices / poll interval (100 devices at 1, 0.5, 0.25 and 0.2 s,
then 1000 devices at 1 s); a step passes when every reading generated in the window
arrived within the drain period and the kit skipped no tick, rejected nothing and gave
nothing up.

The fault run offers 1000 devices at 1 Hz for 60 s while the sink refuses connections
from t=20 s to t=40 s, then waits (bounded) for the backlog, and reports readings lost
(offered or generated, never delivered) and duplicated, for ours and for the kit.

The offered-load sweep (``sweep``; issue 18) offers N devices at 1 Hz (N readings/s) for
each N in ``--sweep`` and reports per step the rate delivered in the window, the share of
offered readings that reached the sink within 2 s of their ``timestamp`` (the sink counts
each reading's age), CPU per delivered reading, spool growth and the sink's CPU, for raw,
ours and the kit (``--kit-sweep``). The overload runs (``overload``: ``--overload 8000
3000busy``) offer N devices for ``--overload-window`` seconds, the ``busy`` ones with a
busy-loop process taking a core, sample goodput and spool depth every second, then wait
(bounded) for the backlog. ``--plot FILE`` draws the sweep (matplotlib).

Usage: python bench/delivery.py [--quick] [--skip raw ours kit fault ladder sweep overload]
[--sweep N ...] [--kit-sweep N ...] [--sweep-window S] [--overload N[busy] ...]
[--overload-window S] [--plot PNG] [--json FILE] [--kit-venv PATH]
(``--skip kit`` leaves out everything of the kit, ``--skip fault`` both fault runs.)
``BENCH_OUTBOX_SETTINGS='{"pipeline": 1}'`` varies our outbox's settings.

``--quick`` (1.5 s sweep steps at 500, 1,000, 2,000 and 8,000 devices, the kit at 500, a
4 s overload at 8,000, our 10 s fault run with a 4 s outage from t=2 s; no capacity ladder,
no kit fault run) ends with one RESULT line; once the kit venv exists it is meant to take
under a minute. Creating the venv on the first run takes about 15 s more. The full run
(ladder, 20 s sweep steps, 60 s overload runs, both fault runs) takes about 40 minutes. Every
subprocess is stopped when the bench ends, also on Ctrl-C or an error, and exits by
itself if the bench is killed (they watch their stdin).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import queue
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from bench.core_sink import watch_stdin  # noqa: E402

SINK_SCRIPT = HERE / "core_sink.py"
KIT_PEER_SCRIPT = HERE / "_kit_peer.py"
KIT_VERSION = "0.10.1"
# The kit pins certifi>=2026.10.19, which the package index does not have yet, so the kit
# goes in without deps and its deps (the kit's own ranges) after it.
KIT_DEPS = (
    "anyio>=4.14.2,<5",
    "httpx>=0.27,<1",
    "pydantic>=2.8,<2.14",
    "fastapi>=0.115,<1",
    "certifi",
    "uvicorn",
    "httptools",
    "uvloop",
    "h11",
)
DEFAULT_KIT_VENV = ROOT / ".bench" / "kit-venv"

TELEMETRY_PATH = "/api/v2/integrations/telemetry"
CONTAINER_ID = "bench-container"
TOKEN = "bench-token"
INTEGRATION_ID = "bench"
CONNECTIONS = 4
TICK = 0.01
DEVICES = 100


@dataclass(frozen=True)
class Params:
    window: float  # seconds of offered load per capacity step
    drain: float  # seconds after the window for the rest to arrive (raw, ours)
    kit_drain: float
    ladder: tuple[int, ...]  # offered payloads/s for raw and ours, up to the first failure
    refine: int  # bisection steps between the last pass and the first failure
    kit_ladder: tuple[tuple[int, float], ...]  # (devices, poll interval s)
    fault_devices: int
    fault_interval: float
    fault_duration: float
    down_at: float
    down_for: float
    fault_drain: float  # bound on the wait for our backlog after the fault run
    kit_fault_drain: float  # the same for the kit (whose deliveries give up after ~20 s)
    sweep: tuple[int, ...] = ()  # offered-load sweep: devices at 1 Hz (= readings/s)
    kit_sweep: tuple[int, ...] = ()  # the kit's steps (it collapses early; fewer of them)
    sweep_window: float = 20.0
    sweep_drain: float = 5.0
    overload: tuple[tuple[int, bool], ...] = ()  # (devices at 1 Hz, another process busy)
    overload_window: float = 60.0
    overload_drain: float = 120.0  # bound on the wait for the backlog after it

    @classmethod
    def full(cls) -> Params:
        return cls(
            window=30.0,
            drain=1.0,
            kit_drain=2.0,
            ladder=(250, 500, 1000, 2000, 4000, 8000),
            refine=2,
            kit_ladder=((100, 1.0), (100, 0.5), (100, 0.25), (100, 0.2), (1000, 1.0)),
            fault_devices=1000,
            fault_interval=1.0,
            fault_duration=60.0,
            down_at=20.0,
            down_for=20.0,
            fault_drain=90.0,
            kit_fault_drain=25.0,
            sweep=(500, 1000, 2000, 3000, 4000, 5000, 6000, 8000),
            kit_sweep=(500, 1000, 2000, 4000, 8000),
            sweep_window=20.0,
            sweep_drain=5.0,
            overload=((8000, False), (3000, True)),
            overload_window=60.0,
            overload_drain=180.0,
        )

    @classmethod
    def quick(cls) -> Params:
        return cls(
            window=1.5,
            drain=0.5,
            kit_drain=1.0,
            ladder=(500, 1000, 2000, 4000),
            refine=1,
            kit_ladder=((100, 0.5), (100, 0.25), (100, 0.2), (1000, 1.0)),
            fault_devices=1000,
            fault_interval=1.0,
            fault_duration=10.0,
            down_at=2.0,
            down_for=4.0,
            fault_drain=15.0,
            kit_fault_drain=2.0,
            sweep=(500, 1000, 2000, 8000),
            kit_sweep=(500,),
            sweep_window=1.5,
            sweep_drain=0.5,
            overload=((8000, False),),
            overload_window=4.0,
            overload_drain=2.0,
        )

    @classmethod
    def from_json(cls, text: str) -> Params:
        fields = json.loads(text)
        for name in ("ladder", "sweep", "kit_sweep"):
            fields[name] = tuple(fields[name])
        fields["kit_ladder"] = tuple(tuple(pair) for pair in fields["kit_ladder"])
        fields["overload"] = tuple((int(n), bool(hog)) for n, hog in fields["overload"])
        return cls(**fields)


# ---------------------------------------------------------------------------------------
# child process: the raw httpx loop and our outbox, under trio
# ---------------------------------------------------------------------------------------


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def host_busy_seconds() -> float:
    """CPU seconds every process on the machine has used (from /proc/stat)."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def encode(device: int, seq: int, observed_at: float) -> bytes:
    """The body the outbox posts for the same reading (same keys, same encoder)."""
    payload = {
        "telemetry_id": os.urandom(16).hex(),
        "device_id": f"dev{device}",
        "config_id": f"cfg{device}",
        "container_id": CONTAINER_ID,
        "integration_id": INTEGRATION_ID,
        "metrics": {"temperature_c": 21.5, "seq": seq},
        "units": {"temperature_c": "C"},
        "timestamp": iso(observed_at),
    }
    return json.dumps(payload, separators=(",", ":"), default=str).encode()


Emit = Callable[[int, int], None]  # offer one reading: (device index, seq)
Idle = Callable[[], bool]  # nothing left queued, spooled or in flight
Extra = Callable[[], dict[str, Any]]  # the sender's own counters
Admit = Callable[[], bool]  # whether a poll may run now (the runtime's Sink.admit)
Sender = tuple[Emit, Idle, Extra, Admit]


def emit_line(kind: str, body: dict[str, Any]) -> None:
    print(json.dumps({kind: body}), flush=True)


class Child:
    """What one child run needs: the sink's URLs and its admin client."""

    def __init__(self, impl: str, sink_url: str, admin: httpx.AsyncClient, tmp: Path) -> None:
        self.impl = impl
        self.sink_url = sink_url
        self.admin = admin
        self.tmp = tmp
        self.runs = 0

    async def sink_stats(self, timeline: bool = False) -> dict[str, Any]:
        response = await self.admin.get("/admin/stats", params={"timeline": int(timeline)})
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    async def reset(self) -> None:
        (await self.admin.post("/admin/reset")).raise_for_status()

    @contextlib.asynccontextmanager
    async def sender(self, devices: int = 0) -> AsyncIterator[Sender]:
        """A fresh raw loop or outbox (with a fresh spool) for one run; ``devices``
        configured before it starts."""
        self.runs += 1
        if self.impl == "raw":
            async with raw_loop(self.sink_url) as parts:
                yield parts
        else:
            spool = self.tmp / f"spool-{self.runs}.db"
            async with outbox_loop(self.sink_url, spool, devices) as parts:
                yield parts


@contextlib.asynccontextmanager
async def raw_loop(sink_url: str) -> AsyncIterator[Sender]:
    counts = {"delivered": 0, "failed": 0, "busy": 0}
    send, receive = trio.open_memory_channel[bytes](math.inf)
    headers = {
        "Content-Type": "application/json",
        "X-Container-Id": CONTAINER_ID,
        "X-PiPhi-Integration-Token": TOKEN,
    }
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    async with httpx.AsyncClient(
        base_url=sink_url, timeout=httpx.Timeout(5.0), limits=limits, headers=headers
    ) as http:

        async def one_sender(bodies: trio.MemoryReceiveChannel[bytes]) -> None:
            async with bodies:
                async for body in bodies:
                    counts["busy"] += 1
                    try:
                        response = await http.post(TELEMETRY_PATH, content=body)
                    except httpx.HTTPError:
                        counts["failed"] += 1
                    else:
                        ok = 200 <= response.status_code < 300
                        counts["delivered" if ok else "failed"] += 1
                    finally:
                        counts["busy"] -= 1

        def emit(device: int, seq: int) -> None:
            send.send_nowait(encode(device, seq, time.time()))

        def queued() -> int:
            return send.statistics().current_buffer_used + counts["busy"]

        def extra() -> dict[str, Any]:
            return {**counts, "pending": queued()}

        async with trio.open_nursery() as nursery:
            async with receive:
                for _ in range(CONNECTIONS):
                    nursery.start_soon(one_sender, receive.clone())
            yield emit, lambda: queued() == 0, extra, lambda: True
            nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def outbox_loop(sink_url: str, spool_path: Path, devices: int) -> AsyncIterator[Sender]:
    from runtime import DeviceIdentity, Reading
    from runtime.delivery import CoreClient, OutboxSettings, open_outbox
    from runtime.lowlevel import TelemetryRecord

    client = CoreClient(
        base_url=sink_url,
        container_id=CONTAINER_ID,
        token=TOKEN,
        integration_id=INTEGRATION_ID,
    )
    identities: list[Any] = []

    # BENCH_OUTBOX_SETTINGS (JSON) varies the outbox, e.g. '{"pipeline": 1}'.
    settings = OutboxSettings(**json.loads(os.environ.get("BENCH_OUTBOX_SETTINGS") or "{}"))
    async with client, open_outbox(client, spool_path=spool_path, settings=settings) as ob:

        def configure(upto: int) -> None:
            # What the reconciler has done by the time a device reports: its identity is
            # made once, not in the window.
            while upto > len(identities):
                i = len(identities)
                identities.append(
                    DeviceIdentity(
                        id=f"dev{i}",
                        config_id=f"cfg{i}",
                        device_id=f"dev{i}",
                        container_id=CONTAINER_ID,
                        integration_id=INTEGRATION_ID,
                    )
                )

        configure(devices)

        def emit(device: int, seq: int) -> None:
            configure(device + 1)
            ob.telemetry(
                TelemetryRecord(
                    identity=identities[device],
                    device_id=f"dev{device}",
                    readings=(Reading("temperature_c", 21.5, "C"), Reading("seq", seq)),
                    observed_at=time.time(),
                )
            )

        def idle() -> bool:
            stats = ob.stats()
            return bool(stats.queue_depth + stats.spool_depth + stats.in_flight == 0)

        def extra() -> dict[str, Any]:
            stats = ob.stats()
            out = {
                name: getattr(stats, name, None)
                for name in (
                    "accepted",
                    "delivered",
                    "retried",
                    "spooled",
                    "replayed",
                    "dropped",
                    "rejected",
                    "in_flight",
                    "queue_depth",
                    "spool_depth",
                    "deferred",
                )
            }
            out["link"] = str(getattr(stats.link, "state", stats.link))
            out["pending"] = stats.queue_depth + stats.spool_depth + stats.in_flight
            return out

        yield emit, idle, extra, ob.admit


async def poll_until(done: Callable[[], bool], interval: float) -> None:
    """Poll ``done`` every ``interval`` s; bound it with a cancel scope."""
    while not done():  # noqa: ASYNC110 (counters, nothing to wait on)
        await trio.sleep(interval)


class Offer:
    """Offers payloads at a fixed rate; ``count`` is how many were made so far, and
    ``deferred`` how many were not, because the sender did not admit their tick."""

    def __init__(self, emit: Emit, admit: Admit = lambda: True) -> None:
        self.emit = emit
        self.admit = admit
        self.count = 0
        self.deferred = 0

    async def run(self, rate: float, seconds: float, devices: int) -> int:
        """Offer ``rate`` payloads a second for ``seconds``, in 10 ms ticks, round-robin
        over ``devices`` with a per-device seq from 1. A late tick catches up, so the
        offered load does not depend on how busy the process is; a tick the sender does
        not admit makes nothing, as the runtime's actors put a poll off
        (``Sink.admit``), and those readings are never made. Returns the count made."""
        total = self.count + self.deferred + round(rate * seconds)
        seqs = [0] * devices
        start, base = trio.current_time(), self.count + self.deferred
        device = tick = 0
        while self.count + self.deferred < total:
            tick += 1
            await trio.sleep_until(start + tick * TICK)
            due = min(total, base + int(rate * (trio.current_time() - start))) - self.deferred
            if self.count < due and not self.admit():
                self.deferred += due - self.count
                continue
            while self.count < due:
                seqs[device] += 1
                self.emit(device, seqs[device])
                self.count += 1
                device += 1
                if device == devices:
                    device = 0
        return self.count


async def settle(child: Child, offered: int, idle: Idle, poll: float) -> float | None:
    """Wait, under the caller's cancel scope, until the sink holds every offered payload.

    Returns when that happened, or None once the sender has been idle (nothing queued,
    spooled or in flight) for three checks in a row while some payloads never arrived.
    The sender's own counters are not trusted for arrival: duplicates would inflate them.
    """
    idle_checks = 0
    while True:  # bounded by the caller's cancel scope
        await poll_until(idle, poll)
        stats = await child.sink_stats()
        if stats["unique"] >= offered:
            return trio.current_time()
        idle_checks = idle_checks + 1 if idle() else 0
        if idle_checks >= 3:
            return None
        await trio.sleep(0.05)


async def capacity_step(child: Child, rate: int, window: float, drain: float) -> dict[str, Any]:
    await child.reset()
    sink0 = await child.sink_stats()
    cpu0, host0, t0 = cpu_seconds(), host_busy_seconds(), trio.current_time()
    async with child.sender() as (emit, idle, extra, _):
        offered = await Offer(emit).run(rate, window, DEVICES)
        t_window = trio.current_time()
        sink_window = await child.sink_stats()
        settled_at: float | None = None
        with trio.move_on_at(t_window + drain):
            settled_at = await settle(child, offered, idle, 0.005)
        cpu1, host1, t1 = cpu_seconds(), host_busy_seconds(), trio.current_time()
        sink1 = await child.sink_stats()
        details = extra()
    elapsed = t_window - t0
    sink_cpu = sink1["cpu_s"] - sink0["cpu_s"]
    other = (host1 - host0) - (cpu1 - cpu0) - sink_cpu
    complete = sink1["unique"] == offered
    return {
        "impl": child.impl,
        "rate": rate,
        "window_s": round(elapsed, 3),
        "offered": offered,
        "delivered_in_window": sink_window["unique"],
        "delivered": sink1["unique"],
        "duplicates": sink1["duplicates"],
        "complete": complete,
        "drained_ms": None if settled_at is None else round((settled_at - t_window) * 1000, 1),
        "delivered_per_s": round(sink1["unique"] / (t1 - t0), 1),
        "cpu_pct": round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
        "sink_cpu_pct": round(100 * sink_cpu / (t1 - t0), 1),
        "other_cpu_pct": round(100 * other / (t1 - t0), 1),
        "connections": sink1["connections"],
        "details": details,
    }


async def child_sweep(child: Child, params: Params) -> None:
    async def step(rate: int) -> bool:
        result = await capacity_step(child, rate, params.window, params.drain)
        emit_line("step", result)
        await trio.sleep(0.2)  # let anything cancelled in flight land before the next reset
        return bool(result["complete"])

    passed, failed = 0, None
    for rate in params.ladder:
        if await step(rate):
            passed = rate
        else:
            failed = rate
            break
    for _ in range(params.refine if failed is not None else 0):
        assert failed is not None
        middle = int(round((passed + failed) / 2 / 50) * 50)
        if middle <= passed or middle >= failed:
            break
        if await step(middle):
            passed = middle
        else:
            failed = middle
    emit_line("capacity", {"impl": child.impl, "capacity": passed, "first_failure": failed})


async def child_fault(child: Child, params: Params) -> None:
    rate = params.fault_devices / params.fault_interval
    await child.reset()
    samples: list[tuple[float, int]] = []  # (t, offered - arrived)
    settled_at: float | None = None
    async with child.sender() as (emit, idle, extra, _):
        t0 = trio.current_time()
        offer = Offer(emit)

        async def outage() -> None:
            await trio.sleep_until(t0 + params.down_at)
            response = await child.admin.post(
                "/admin/down", params={"seconds": params.down_for, "mode": "refuse"}
            )
            response.raise_for_status()

        async def sample() -> None:
            while True:  # cancelled with the nursery
                offered = offer.count
                arrived = (await child.sink_stats())["unique"]
                samples.append((trio.current_time() - t0, offered - arrived))
                await trio.sleep(0.25)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(outage)
            nursery.start_soon(sample)
            offered = await offer.run(rate, params.fault_duration, params.fault_devices)
            with trio.move_on_after(params.fault_drain):
                done = await settle(child, offered, idle, 0.02)
                settled_at = None if done is None else done - t0
                if settled_at is not None:
                    samples.append((settled_at, 0))
            nursery.cancel_scope.cancel()
        sink = await child.sink_stats(timeline=True)
        details = extra()
    emit_line(
        "fault",
        {
            "impl": child.impl,
            "devices": params.fault_devices,
            "rate": rate,
            "offered": offered,
            "delivered": sink["unique"],
            "lost": offered - sink["unique"],
            "duplicates": sink["duplicates"],
            "gaps": sink["gaps"],
            "settled_at_s": None if settled_at is None else round(settled_at, 2),
            "caught_up_after_up_s": caught_up(samples, params, rate),
            "pending_at_end": details.get("pending", 0),
            "details": details,
            "timeline": sink.get("timeline", []),
        },
    )


def caught_up(samples: list[tuple[float, int]], params: Params, rate: float) -> float | None:
    """Seconds from Core's return until the undelivered backlog was under 50 ms' worth."""
    t_up = params.down_at + params.down_for
    for t, backlog in samples:
        if t >= t_up and backlog <= max(10, rate / 20):
            return round(t - t_up, 2)
    return None


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def on_time(before: dict[str, Any], after: dict[str, Any]) -> int:
    """Readings that reached the sink within its ``ON_TIME`` between two stats."""
    return int(after["ages"]["on_time"] - before["ages"]["on_time"])


async def offer_step(child: Child, rate: int, window: float, drain: float) -> dict[str, Any]:
    """``rate`` devices at 1 Hz for ``window`` s, then at most ``drain`` s for the rest."""
    await child.reset()
    load = load_average()
    sink0 = await child.sink_stats()
    async with child.sender(rate) as (emit, idle, extra, admit):
        before = extra()
        cpu0, host0, t0 = cpu_seconds(), host_busy_seconds(), trio.current_time()
        offer = Offer(emit, admit)
        offered = await offer.run(rate, window, rate)
        cpu1, host1, t1 = cpu_seconds(), host_busy_seconds(), trio.current_time()
        sink1 = await child.sink_stats()
        at_end = extra()
        settled_at: float | None = None
        with trio.move_on_at(t1 + drain):
            settled_at = await settle(child, offered, idle, 0.02)
        sink2 = await child.sink_stats()
        details = extra()
    elapsed = t1 - t0
    in_window = sink1["unique"] - sink0["unique"]
    sink_cpu = sink1["cpu_s"] - sink0["cpu_s"]
    spool = None
    if "spool_depth" in at_end:
        spool = round((at_end["spool_depth"] - before["spool_depth"]) / elapsed, 1)
    return {
        "impl": child.impl,
        "rate": rate,
        "load": load,
        "window_s": round(elapsed, 3),
        "offered": offered,
        "deferred": offer.deferred,
        "delivered_in_window": in_window,
        "delivered_per_s": round(in_window / elapsed, 1),
        "delivered": sink2["unique"] - sink0["unique"],
        "on_time": on_time(sink0, sink2),
        "on_time_share": round(on_time(sink0, sink2) / offered, 4) if offered else None,
        "age_max_s": sink2["ages"]["max"],
        "duplicates": sink2["duplicates"],
        "drained_ms": None if settled_at is None else round((settled_at - t1) * 1000, 1),
        "cpu_pct": round(100 * (cpu1 - cpu0) / elapsed, 1),
        "cpu_ms_per_reading": round(1000 * (cpu1 - cpu0) / in_window, 4) if in_window else None,
        "sink_cpu_pct": round(100 * sink_cpu / elapsed, 1),
        "other_cpu_pct": round(100 * ((host1 - host0) - (cpu1 - cpu0) - sink_cpu) / elapsed, 1),
        "spool_growth_per_s": spool,
        "backlog_at_end": at_end.get("pending"),
        "details": details,
    }


async def child_offer(child: Child, params: Params) -> None:
    for rate in params.sweep:
        result = await offer_step(child, rate, params.sweep_window, params.sweep_drain)
        emit_line("offer", result)
        await trio.sleep(0.5)  # let anything cancelled in flight land before the next reset


def start_hog(seconds: float) -> subprocess.Popen[bytes]:
    """Another process taking a core: a busy loop that ends by itself after ``seconds``."""
    code = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass\n"
    return subprocess.Popen([sys.executable, "-c", code], start_new_session=True)


async def overload_run(child: Child, devices: int, params: Params) -> dict[str, Any]:
    """``devices`` at 1 Hz for the window, sampled every second; then the drain."""
    await child.reset()
    load = load_average()
    timeline: list[dict[str, Any]] = []
    settled_at: float | None = None
    async with child.sender(devices) as (emit, idle, extra, admit):
        offer = Offer(emit, admit)
        t0 = trio.current_time()
        cpu0 = cpu_seconds()

        async def sample() -> None:
            last = 0
            while True:  # cancelled with the nursery
                await trio.sleep(1.0)
                unique = (await child.sink_stats())["unique"]
                state = extra()
                timeline.append(
                    {
                        "t": round(trio.current_time() - t0, 2),
                        "offered": offer.count,
                        "delivered": unique - last,
                        "spool_depth": state.get("spool_depth"),
                        "queue_depth": state.get("queue_depth"),
                        "cpu_s": round(cpu_seconds() - cpu0, 3),
                    }
                )
                last = unique

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample)
            offered = await offer.run(devices, params.overload_window, devices)
            t1 = trio.current_time()
            with trio.move_on_after(params.overload_drain):
                done = await settle(child, offered, idle, 0.1)
                settled_at = None if done is None else done - t1
            nursery.cancel_scope.cancel()
        sink = await child.sink_stats()
        details = extra()
    window = [row for row in timeline if 1.0 < row["t"] <= params.overload_window + 0.5]
    rates = sorted(row["delivered"] for row in window)
    growth = None
    if len(window) >= 2 and window[0]["spool_depth"] is not None:
        span = window[-1]["t"] - window[0]["t"]
        growth = round((window[-1]["spool_depth"] - window[0]["spool_depth"]) / span, 1)
    return {
        "impl": child.impl,
        "devices": devices,
        "load": load,
        "offered": offered,
        "deferred": offer.deferred,
        "delivered": sink["unique"],
        "pending_at_end": details.get("pending", 0),
        # Dropped by the outbox; once drained, also whatever never arrived.
        "lost": (offered - sink["unique"]) if settled_at is not None else details.get("dropped"),
        "duplicates": sink["duplicates"],
        "goodput_min": rates[0] if rates else None,
        "goodput_median": rates[len(rates) // 2] if rates else None,
        "spool_growth_per_s": growth,
        "drained_after_s": None if settled_at is None else round(settled_at, 1),
        "timeline": timeline,
        "details": details,
    }


async def child_overload(child: Child, params: Params) -> None:
    for devices, hog in params.overload:
        busy = start_hog(params.overload_window + 5) if hog else None
        try:
            result = await overload_run(child, devices, params)
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
        emit_line("overload", {**result, "hog": hog})
        await trio.sleep(0.5)


async def child_main(impl: str, mode: str, sink_url: str, admin_url: str, params: Params) -> None:
    with tempfile.TemporaryDirectory(prefix=f"delivery-{impl}-") as tmp:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_stdin, nursery.cancel_scope)
            async with httpx.AsyncClient(base_url=admin_url, timeout=10.0) as admin:
                child = Child(impl, sink_url, admin, Path(tmp))
                if mode == "sweep":
                    await child_sweep(child, params)
                elif mode == "offer":
                    await child_offer(child, params)
                elif mode == "overload":
                    await child_overload(child, params)
                else:
                    await child_fault(child, params)
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------------------
# parent: subprocesses, the kit, the report
# ---------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"# {message}", flush=True)


class Service:
    """A subprocess in its own session, talking JSON lines on stdin/stdout.

    ``close()`` closes its stdin (each of ours exits on that), then SIGTERM and SIGKILL to
    its own process group if it has not gone within the grace period.
    """

    def __init__(
        self, name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in close())
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            cwd=str(ROOT),
            start_new_session=True,
        )
        self.pid = self.popen.pid
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, name=f"{name}-stdout", daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            self._lines.put(raw.decode(errors="replace"))
        self._lines.put(None)

    def line(self, timeout: float) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(
                f"{self.name}: no output within {timeout:g} s\n{self.tail()}"
            ) from None
        if line is None:
            self._lines.put(None)
            code = self.popen.wait(timeout=5)
            raise RuntimeError(f"{self.name} exited with {code}\n{self.tail()}")
        return line

    def json_line(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:  # bounded by the deadline
            text = self.line(max(0.01, deadline - time.monotonic())).strip()
            if text.startswith("{"):
                result: dict[str, Any] = json.loads(text)
                return result

    def send(self, text: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(text.encode() + b"\n")
        self.popen.stdin.flush()

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(f"  {self.name}| {line}" for line in text.splitlines()[-lines:])

    def close(self, grace: float = 3.0) -> None:
        if self.popen.stdin is not None:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, sig)  # the group of the process we started
            try:
                self.popen.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        self._log.close()

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ensure_kit_venv(venv: Path) -> Path:
    """Create the kit's venv once; later runs reuse it (a stamp records what is in it)."""
    python = venv / "bin" / "python"
    stamp = venv / ".bench-installed"
    want = json.dumps({"kit": KIT_VERSION, "deps": KIT_DEPS})
    if python.exists() and stamp.exists() and stamp.read_text() == want:
        return python
    if venv.parent.name == ".bench":
        venv.parent.mkdir(exist_ok=True)
        (venv.parent / ".gitignore").write_text("# made by bench/delivery.py\n*\n")
    log(f"creating {venv} with piphi-runtime-kit-python {KIT_VERSION} (first run only, ~15 s)")
    if venv.exists():
        shutil.rmtree(venv)
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            f"piphi-runtime-kit-python=={KIT_VERSION}",
        ],
        [str(python), "-m", "pip", "install", "--quiet", *KIT_DEPS],
    ]
    for argv in steps:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}")
    stamp.write_text(want)
    return python


class Sink:
    def __init__(self, log_dir: Path, lifetime: float) -> None:
        argv = [sys.executable, str(SINK_SCRIPT), "--exit-on-stdin-eof"]
        self.service = Service("sink", [*argv, "--max-seconds", str(lifetime)], log_dir)
        try:
            ports = self.service.json_line(15.0)
        except BaseException:
            self.service.close()
            raise
        self.url = f"http://127.0.0.1:{ports['data_port']}"
        self.parser = str(ports.get("parser", "h11"))
        self.admin_url = f"http://127.0.0.1:{ports['admin_port']}"
        self.admin = httpx.Client(base_url=self.admin_url, timeout=10.0)

    def stats(self, timeline: bool = False) -> dict[str, Any]:
        response = self.admin.get("/admin/stats", params={"timeline": int(timeline)})
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def post(self, path: str, **params: Any) -> None:
        self.admin.post(path, params=params).raise_for_status()

    def close(self) -> None:
        self.admin.close()
        self.service.close()


class Kit:
    """The kit peer (bench/_kit_peer.py) under uvicorn, in the kit's venv."""

    def __init__(self, python: Path, sink_url: str, log_dir: Path, name: str) -> None:
        env = dict(os.environ, PIPHI_CORE_BASE_URL=sink_url, PYTHONDONTWRITEBYTECODE="1")
        for key in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
            env.pop(key, None)
        self.service = Service(name, [str(python), str(KIT_PEER_SCRIPT)], log_dir, env)
        self.generation = 0
        try:
            hello = self.service.json_line(30.0)
            self.versions: dict[str, str] = hello["versions"]
            self.http = httpx.Client(base_url=f"http://127.0.0.1:{hello['port']}", timeout=30.0)
            self._wait_healthy(30.0)
        except BaseException:
            self.service.close()
            raise

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:  # bounded by the deadline
            with contextlib.suppress(httpx.HTTPError):
                if self.http.get("/health", timeout=2.0).is_success:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"kit peer not healthy after {timeout:g} s\n{self.service.tail()}"
                )
            time.sleep(0.05)

    def sync(self, prefix: str, devices: int, interval: float, timeout: float) -> float:
        """Configure ``devices`` devices (replacing all others); returns the seconds taken."""
        self.generation += 1
        configs = [
            {
                "id": f"{prefix}cfg{i}",
                "config_id": f"{prefix}cfg{i}",
                "device_id": f"{prefix}dev{i}",
                "container_id": CONTAINER_ID,
                "integration_id": INTEGRATION_ID,
                "poll_interval_seconds": interval,
                "alias": f"sensor {i}",
            }
            for i in range(devices)
        ]
        snapshot = {
            "container_id": CONTAINER_ID,
            "integration_id": INTEGRATION_ID,
            "generation": self.generation,
            "reason": "bench",
            "configs": configs,
        }
        headers = {"X-Container-Id": CONTAINER_ID, "X-PiPhi-Integration-Token": TOKEN}
        start = time.monotonic()
        response = self.http.post("/config/sync", json=snapshot, headers=headers, timeout=timeout)
        response.raise_for_status()
        return time.monotonic() - start

    def counters(self, command: str = "counters") -> dict[str, int]:
        self.service.send(command)
        return self.service.json_line(10.0)

    def close(self) -> None:
        self.http.close()
        self.service.close()


def sleep_until(deadline: float) -> None:
    time.sleep(max(0.0, deadline - time.monotonic()))


def kit_drain(
    sink: Sink, kit: Kit, generated: int, bound: float, since: float
) -> tuple[dict[str, Any], float]:
    """Wait until everything generated arrived, nothing is left in flight, or ``bound``
    seconds after ``since`` (when generation stopped). Returns the sink's stats and the
    seconds from ``since`` to the check that ended the wait."""
    while True:  # bounded by ``bound``
        checked = time.monotonic()
        stats = sink.stats()
        if stats["unique"] >= generated or checked - since >= bound:
            break
        if kit.counters()["pending"] == 0:
            time.sleep(0.1)  # the last responses may still be on their way
            checked = time.monotonic()
            stats = sink.stats()
            break
        time.sleep(0.05)
    return stats, checked - since


def kit_step(
    sink: Sink, kit: Kit, step: int, devices: int, interval: float, params: Params
) -> dict[str, Any]:
    sink.post("/admin/reset")
    before = kit.counters()
    sink0, cpu0 = sink.stats(), kit.service.cpu_seconds()
    own0, host0 = cpu_seconds(), host_busy_seconds()
    t0 = time.monotonic()
    try:
        sync_s: float | None = kit.sync(f"s{step}", devices, interval, timeout=params.window + 10)
    except httpx.HTTPError:
        sync_s = None
    sleep_until(t0 + params.window)
    after = kit.counters("pause")
    t1 = time.monotonic()
    cpu1 = kit.service.cpu_seconds()
    delivered_in_window = sink.stats()["unique"]
    delta = {key: after[key] - before[key] for key in after if key not in ("pending", "loops")}
    final, drain_s = kit_drain(sink, kit, delta["generated"], params.kit_drain, since=t1)
    host1, own1 = host_busy_seconds(), cpu_seconds()
    sink_cpu = final["cpu_s"] - sink0["cpu_s"]
    other = (host1 - host0) - (own1 - own0) - sink_cpu - (kit.service.cpu_seconds() - cpu0)
    nominal = devices / interval * (t1 - t0)
    complete = (
        sync_s is not None
        and final["unique"] == delta["generated"]
        and delta["generated"] >= 0.9 * nominal
        and delta["late_ticks"] == 0
        and delta["rejected"] == 0
        and delta["gave_up"] == 0
    )
    return {
        "impl": "kit",
        "devices": devices,
        "interval": interval,
        "rate": devices / interval,
        "window_s": round(t1 - t0, 3),
        "sync_ms": None if sync_s is None else round(sync_s * 1000, 1),
        "generated": delta["generated"],
        "nominal": round(nominal),
        "delivered_in_window": delivered_in_window,
        "delivered": final["unique"],
        "duplicates": final["duplicates"],
        "complete": complete,
        "drained_ms": round(drain_s * 1000, 1) if final["unique"] >= delta["generated"] else None,
        "delivered_per_s": round(final["unique"] / (t1 - t0 + drain_s), 1),
        "cpu_pct": round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
        "sink_cpu_pct": round(100 * sink_cpu / (t1 - t0 + drain_s), 1),
        "other_cpu_pct": round(100 * other / (t1 - t0 + drain_s), 1),
        "connections": final["connections"],
        "details": {**delta, "pending_after_drain": kit.counters()["pending"]},
    }


def kit_sweep(
    sink: Sink, python: Path, log_dir: Path, params: Params, on_step: Callable[[Any], None]
) -> dict[str, Any]:
    kit = Kit(python, sink.url, log_dir, "kit-sweep")
    passed, failed = 0.0, None
    try:
        for step, (devices, interval) in enumerate(params.kit_ladder):
            result = kit_step(sink, kit, step, devices, interval, params)
            on_step(result)
            if not result["complete"]:
                failed = result["rate"]
                break
            passed = result["rate"]
    finally:
        kit.close()
    return {"impl": "kit", "capacity": passed, "first_failure": failed, "versions": kit.versions}


def kit_fault(sink: Sink, python: Path, log_dir: Path, params: Params) -> dict[str, Any]:
    rate = params.fault_devices / params.fault_interval
    kit = Kit(python, sink.url, log_dir, "kit-fault")
    try:
        sink.post("/admin/reset")
        before = kit.counters()
        t0 = time.monotonic()
        kit.sync("f", params.fault_devices, params.fault_interval, timeout=params.down_at)
        samples: list[tuple[float, int]] = []
        went_down = False
        while True:  # bounded by fault_duration
            now = time.monotonic() - t0
            if now >= params.fault_duration:
                break
            if not went_down and now >= params.down_at:
                sink.post("/admin/down", seconds=params.down_for, mode="refuse")
                went_down = True
            generated = kit.counters()["generated"] - before["generated"]
            samples.append((now, generated - sink.stats()["unique"]))
            time.sleep(min(0.25, max(0.0, params.fault_duration - now)))
        after = kit.counters("pause")
        stopped = time.monotonic()
        generated = after["generated"] - before["generated"]
        final, drain_s = kit_drain(sink, kit, generated, params.kit_fault_drain, since=stopped)
        if final["unique"] >= generated:
            samples.append((params.fault_duration + drain_s, 0))
        end = kit.counters()
    finally:
        kit.close()
    t_up = params.down_at + params.down_for
    caught_up = next(
        (t - t_up for t, backlog in samples if t >= t_up and backlog <= max(10, rate / 20)), None
    )
    return {
        "impl": "kit",
        "devices": params.fault_devices,
        "rate": rate,
        "offered": generated,
        "nominal": round(rate * params.fault_duration),
        "delivered": final["unique"],
        "lost": generated - final["unique"],
        "duplicates": final["duplicates"],
        "gaps": final["gaps"],
        "settled_at_s": round(params.fault_duration + drain_s, 2)
        if final["unique"] >= generated
        else None,
        "caught_up_after_up_s": None if caught_up is None else round(caught_up, 2),
        "pending_at_end": end["pending"],
        "details": {key: after[key] - before[key] for key in ("rejected", "gave_up", "late_ticks")},
    }


def kit_offer_sweep(
    sink: Sink, python: Path, log_dir: Path, params: Params, on_step: Callable[[Any], None]
) -> None:
    """The kit at each of ``kit_sweep`` devices at 1 Hz (a fresh sync per step)."""
    kit = Kit(python, sink.url, log_dir, "kit-offer")
    steps = replace(params, window=params.sweep_window, kit_drain=params.sweep_drain)
    try:
        for step, devices in enumerate(params.kit_sweep):
            load = load_average()
            result = kit_step(sink, kit, 100 + step, devices, 1.0, steps)
            ages = sink.stats()  # kit_step reset the sink: these are this step's
            generated = result["generated"] or 1
            in_window = result["delivered_in_window"]
            cpu_s = result["cpu_pct"] / 100 * result["window_s"]
            on_step(
                {
                    "impl": "kit",
                    "rate": devices,
                    "load": load,
                    "window_s": result["window_s"],
                    "offered": result["generated"],
                    "delivered_in_window": in_window,
                    "delivered_per_s": round(in_window / result["window_s"], 1),
                    "delivered": result["delivered"],
                    "on_time": ages["ages"]["on_time"],
                    "on_time_share": round(ages["ages"]["on_time"] / generated, 4),
                    "age_max_s": ages["ages"]["max"],
                    "duplicates": result["duplicates"],
                    "drained_ms": result["drained_ms"],
                    "cpu_pct": result["cpu_pct"],
                    "cpu_ms_per_reading": round(1000 * cpu_s / in_window, 4) if in_window else None,
                    "sink_cpu_pct": result["sink_cpu_pct"],
                    "other_cpu_pct": result["other_cpu_pct"],
                    "spool_growth_per_s": None,
                    "backlog_at_end": result["details"].get("pending_after_drain"),
                    "details": result["details"],
                }
            )
    finally:
        kit.close()


def run_child(
    impl: str,
    mode: str,
    sink: Sink,
    params: Params,
    log_dir: Path,
    on_line: Callable[[str, dict[str, Any]], None],
) -> list[tuple[str, dict[str, Any]]]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", impl, "--mode", mode]
    argv += ["--sink-url", sink.url, "--admin-url", sink.admin_url, "--params"]
    argv.append(json.dumps(asdict(params)))
    lines: list[tuple[str, dict[str, Any]]] = []
    if mode == "sweep":
        per_line = params.window + params.drain + 30
    elif mode == "offer":
        per_line = params.sweep_window + params.sweep_drain + 30
    elif mode == "overload":
        per_line = params.overload_window + params.overload_drain + 30
    else:
        per_line = params.fault_duration + params.fault_drain + 30
    with Service(f"{impl}-{mode}", argv, log_dir) as child:
        while True:  # one line per step; every line has a timeout
            try:
                line = child.json_line(per_line)
            except RuntimeError:
                if child.popen.wait(timeout=5) == 0:
                    break
                raise
            ((kind, body),) = line.items()
            lines.append((kind, body))
            on_line(kind, body)
    return lines


def fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def step_line(result: dict[str, Any]) -> str:
    verdict = "complete" if result["complete"] else "INCOMPLETE"
    what = f"{result['rate']:g}/s"
    if result["impl"] == "kit":
        what = f"{result['devices']} devices @ {result['interval']:g} s = {what}"
        offered = result["generated"]
    else:
        offered = result["offered"]
    return (
        f"{result['impl']} {what}: {result['delivered']}/{offered} delivered, {verdict} "
        f"(drained in {fmt(result['drained_ms'])} ms, CPU {fmt(result['cpu_pct'], 1)}%, "
        f"sink CPU {fmt(result['sink_cpu_pct'], 1)}%, other processes "
        f"{fmt(result['other_cpu_pct'], 1)}%)"
    )


def fault_line(result: dict[str, Any]) -> str:
    return (
        f"fault {result['impl']}: {result['offered']} offered, {result['delivered']} delivered, "
        f"lost {result['lost']}, duplicates {result['duplicates']}, caught up "
        f"{fmt(result['caught_up_after_up_s'], 1)} s after Core was back, "
        f"pending at end {result['pending_at_end']}; {json.dumps(result['details'])}"
    )


def report(
    steps: list[dict[str, Any]],
    capacities: dict[str, dict[str, Any]],
    faults: dict[str, dict[str, Any]],
    params: Params,
) -> None:
    print()
    print(
        "| impl | offered/s | delivered/s | offered | delivered | all arrived | drained ms "
        "| dups | runtime CPU % of one core | sink CPU % | other processes CPU % |"
    )
    print("|---" * 11 + "|")
    for r in steps:
        label = r["impl"] if r["impl"] != "kit" else f"kit ({r['devices']} @ {r['interval']:g} s)"
        offered = r["generated"] if r["impl"] == "kit" else r["offered"]
        print(
            f"| {label} | {r['rate']:g} | {r['delivered_per_s']:.0f} | {offered} "
            f"| {r['delivered']} | {'yes' if r['complete'] else '**no**'} "
            f"| {fmt(r['drained_ms'])} | {r['duplicates']} | {r['cpu_pct']:.1f} "
            f"| {r['sink_cpu_pct']:.1f} | {r['other_cpu_pct']:.1f} |"
        )
    print()
    print("| impl | capacity/s (delivered completely) | first failing rate/s |")
    print("|---|---|---|")
    for impl in ("raw", "ours", "kit"):
        if impl in capacities:
            c = capacities[impl]
            print(f"| {impl} | {c['capacity']:g} | {fmt(c['first_failure'])} |")
    if faults:
        print()
        print(
            f"Fault run: {params.fault_devices} devices at {1 / params.fault_interval:g} Hz for "
            f"{params.fault_duration:g} s, Core refusing connections from t={params.down_at:g} s "
            f"for {params.down_for:g} s, then at most {params.fault_drain:g} s (kit "
            f"{params.kit_fault_drain:g} s) for the backlog."
        )
        print()
        print(
            "| impl | readings | delivered | lost | duplicates | caught up after Core back s "
            "| all delivered at s | pending at end | notes |"
        )
        print("|---" * 9 + "|")
        for impl, f in faults.items():
            notes = ", ".join(f"{k} {v}" for k, v in f["details"].items() if v not in (None, 0))
            print(
                f"| {impl} | {f['offered']} | {f['delivered']} | {f['lost']} | {f['duplicates']} "
                f"| {fmt(f['caught_up_after_up_s'], 1)} | {fmt(f['settled_at_s'], 1)} "
                f"| {f['pending_at_end']} | {notes} |"
            )
    print()


def offer_line(r: dict[str, Any]) -> str:
    return (
        f"offer {r['impl']} {r['rate']}/s (load {r['load']}): {r['delivered_per_s']:.0f}/s "
        f"delivered in the window, {fmt(100 * (r['on_time_share'] or 0), 1)}% within 2 s, "
        f"CPU {r['cpu_pct']:.1f}% = {fmt(r['cpu_ms_per_reading'], 3)} ms/reading, spool "
        f"{fmt(r['spool_growth_per_s'])}/s, sink CPU {r['sink_cpu_pct']:.1f}%, other "
        f"{r['other_cpu_pct']:.1f}%, put off {r.get('deferred', 0)}"
    )


def overload_line(r: dict[str, Any]) -> str:
    hog = " + a busy process" if r["hog"] else ""
    return (
        f"overload {r['devices']} devices{hog} (load {r['load']}): goodput min "
        f"{fmt(r['goodput_min'])}/s median {fmt(r['goodput_median'])}/s, spool "
        f"{fmt(r['spool_growth_per_s'])}/s, drained {fmt(r['drained_after_s'])} s after, "
        f"lost {r['lost']}, pending at the end {r['pending_at_end']}, duplicates "
        f"{r['duplicates']}, made {r['offered']}, put off {r.get('deferred', 0)}"
    )


def best_capacity(offers: list[dict[str, Any]], impl: str) -> float:
    return max((r["delivered_per_s"] for r in offers if r["impl"] == impl), default=0.0)


def sweep_report(offers: list[dict[str, Any]], overloads: list[dict[str, Any]]) -> None:
    print()
    print(
        "| impl | offered/s | delivered/s | within 2 s | CPU ms per reading | CPU % of a core "
        "| spool growth /s | sink CPU % | load avg |"
    )
    print("|---" * 9 + "|")
    for r in sorted(offers, key=lambda r: (("raw", "ours", "kit").index(r["impl"]), r["rate"])):
        share = r["on_time_share"]
        print(
            f"| {r['impl']} | {r['rate']:,} | {r['delivered_per_s']:,.0f} "
            f"| {fmt(None if share is None else 100 * share, 1)}% "
            f"| {fmt(r['cpu_ms_per_reading'], 3)} | {r['cpu_pct']:.0f} "
            f"| {fmt(r['spool_growth_per_s'])} | {r['sink_cpu_pct']:.0f} | {r['load']} |"
        )
    if overloads:
        best = best_capacity(offers, "ours")
        print()
        print(
            "| overload | offered/s | goodput min /s | median /s | min / best capacity "
            "| spool growth /s | offered - median | drained after s | lost | put off | load avg |"
        )
        print("|---" * 11 + "|")
        for r in overloads:
            ratio = r["goodput_min"] / best if best and r["goodput_min"] is not None else None
            excess = r["devices"] - (r["goodput_median"] or 0)
            print(
                f"| {r['devices']:,} devices{' + busy process' if r['hog'] else ''} "
                f"| {r['devices']:,} | {fmt(r['goodput_min'])} | {fmt(r['goodput_median'])} "
                f"| {fmt(ratio, 2)} | {fmt(r['spool_growth_per_s'])} | {excess:,} "
                f"| {fmt(r['drained_after_s'])} | {r['lost']} | {r.get('deferred', 0):,} "
                f"| {r['load']} |"
            )
    print()


def sweep_figures(offers: list[dict[str, Any]]) -> dict[str, str]:
    """RESULT keys of the offered-load sweep."""

    def at(impl: str, rate: int) -> dict[str, Any] | None:
        return next((r for r in offers if r["impl"] == impl and r["rate"] == rate), None)

    out: dict[str, str] = {}
    for impl in ("ours", "raw", "kit"):
        if any(r["impl"] == impl for r in offers):
            out[f"{impl}_peak_per_s"] = fmt(best_capacity(offers, impl))
    ours, raw = at("ours", 1000), at("raw", 1000)
    if ours is not None:
        out["ours_ms_per_reading_1000"] = fmt(ours["cpu_ms_per_reading"], 3)
    if raw is not None:
        out["raw_ms_per_reading_1000"] = fmt(raw["cpu_ms_per_reading"], 3)
    if ours and raw and ours["cpu_ms_per_reading"] and raw["cpu_ms_per_reading"]:
        out["cpu_ratio_1000"] = fmt(ours["cpu_ms_per_reading"] / raw["cpu_ms_per_reading"], 2)
    top = max((r["rate"] for r in offers if r["impl"] == "ours"), default=None)
    if top is not None:
        last = at("ours", top)
        assert last is not None
        out[f"ours_at_{top}_per_s"] = fmt(last["delivered_per_s"])
    five = at("ours", 5000)
    if five is not None and five["on_time_share"] is not None:
        out["ours_within_2s_5000"] = fmt(five["on_time_share"], 4)
    return out


def result_line(
    capacities: dict[str, dict[str, Any]],
    faults: dict[str, dict[str, Any]],
    offers: list[dict[str, Any]] | None = None,
    overloads: list[dict[str, Any]] | None = None,
) -> str:
    def cap(impl: str) -> str:
        return fmt(capacities[impl]["capacity"]) if impl in capacities else "na"

    lost = fmt(faults["ours"]["lost"]) if "ours" in faults else "na"
    line = (
        f"RESULT ours_per_s={cap('ours')} raw_httpx_per_s={cap('raw')} "
        f"kit_per_s={cap('kit')} lost={lost}"
    )
    extra = sweep_figures(offers or [])
    for r in overloads or []:
        name = f"overload_{r['devices']}{'_busy' if r['hog'] else ''}"
        extra[f"{name}_min_per_s"] = fmt(r["goodput_min"])
        extra[f"{name}_lost"] = fmt(r["lost"])
    return line + "".join(f" {key}={value}" for key, value in extra.items())


def plot_sweep(offers: list[dict[str, Any]], path: Path, title: str) -> None:
    """Delivered/s and the share within 2 s against the offered load, one line per impl."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install -e '.[bench]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    styles = {"ours": ("C0", "o"), "raw": ("C1", "s"), "kit": ("C3", "^")}
    labels = {"ours": "ours (outbox)", "raw": "bare httpx loop", "kit": "PiPhi kit"}
    for impl, (colour, marker) in styles.items():
        rows = sorted((r for r in offers if r["impl"] == impl), key=lambda r: r["rate"])
        if not rows:
            continue
        x = [r["rate"] for r in rows]
        top.plot(
            x, [r["delivered_per_s"] for r in rows], marker=marker, color=colour, label=labels[impl]
        )
        bottom.plot(
            x,
            [100 * (r["on_time_share"] or 0) for r in rows],
            marker=marker,
            color=colour,
            label=labels[impl],
        )
    rates = sorted({r["rate"] for r in offers})
    if rates:
        top.plot(rates, rates, linestyle=":", color="grey", label="offered")
    top.set_ylabel("delivered readings/s")
    top.set_title(title)
    top.legend()
    top.grid(True, alpha=0.3)
    bottom.set_ylabel("% delivered within 2 s")
    bottom.set_xlabel("offered readings/s (devices at 1 Hz)")
    bottom.set_ylim(-5, 105)
    bottom.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parent_main(args: argparse.Namespace) -> None:
    params = Params.quick() if args.quick else Params.full()
    if args.window is not None:
        params = replace(params, window=args.window)
    if args.sweep:
        params = replace(params, sweep=tuple(args.sweep))
    if args.kit_sweep is not None:
        params = replace(params, kit_sweep=tuple(args.kit_sweep))
    if args.sweep_window is not None:
        params = replace(params, sweep_window=args.sweep_window)
    if args.overload:
        runs = tuple((int(x.removesuffix("busy")), x.endswith("busy")) for x in args.overload)
        params = replace(params, overload=runs)
    if args.overload_window is not None:
        params = replace(params, overload_window=args.overload_window)
    skip = set(args.skip)
    if args.quick:
        skip.add("ladder")  # the sweep's figures stand in for the capacity ladder
    started, host_started = time.monotonic(), host_busy_seconds()
    header = (
        f"{os.cpu_count()} cores, python {sys.version.split()[0]}, trio {trio.__version__}, "
        f"httpx {httpx.__version__}; window {params.window:g} s, drain {params.drain:g} s "
        f"(kit {params.kit_drain:g} s), sweep window {params.sweep_window:g} s; "
        f"load average {load_average()}"
    )
    log(header)
    kit_python: Path | None = None
    if "kit" not in skip:
        try:
            kit_python = ensure_kit_venv(Path(args.kit_venv))
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            print(f"kit venv: {exc}", file=sys.stderr)
            log(f"kit venv FAILED ({str(exc).splitlines()[0]}); the kit's parts are left out")
    steps: list[dict[str, Any]] = []
    capacities: dict[str, dict[str, Any]] = {}
    faults: dict[str, dict[str, Any]] = {}
    offers: list[dict[str, Any]] = []
    overloads: list[dict[str, Any]] = []

    def on_line(kind: str, body: dict[str, Any]) -> None:
        if kind == "step":
            steps.append(body)
            log(step_line(body))
        elif kind == "capacity":
            capacities[body["impl"]] = body
        elif kind == "fault":
            faults[body["impl"]] = body
            log(fault_line(body))
        elif kind == "offer":
            offers.append(body)
            log(offer_line(body))
        elif kind == "overload":
            overloads.append(body)
            log(overload_line(body))

    log_dir = Path(tempfile.mkdtemp(prefix="delivery-bench-"))
    failed: list[str] = []

    def part(name: str, run: Callable[[], object]) -> None:
        """Run one part; a failure is reported and the other parts still run."""
        try:
            run()
        except Exception as exc:
            failed.append(name)
            print(f"{name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            log(f"{name} FAILED: {type(exc).__name__}: {str(exc).splitlines()[0]}")

    def kit_capacity() -> None:
        assert kit_python is not None
        kit = kit_sweep(sink, kit_python, log_dir, params, lambda r: on_line("step", r))
        capacities["kit"] = kit
        log(f"kit versions: {json.dumps(kit['versions'])}")

    def kit_offers() -> None:
        assert kit_python is not None
        kit_offer_sweep(sink, kit_python, log_dir, params, lambda r: on_line("offer", r))

    def kit_outage() -> None:
        assert kit_python is not None
        on_line("fault", kit_fault(sink, kit_python, log_dir, params))

    def child(impl: str, mode: str) -> Callable[[], object]:
        return partial(run_child, impl, mode, sink, params, log_dir, on_line)

    sink = Sink(log_dir, lifetime=3600.0)
    log(f"sink: pid {sink.service.pid}, {sink.parser} parser")
    try:
        for impl in ("raw", "ours"):
            if impl not in skip and "ladder" not in skip:
                part(f"{impl} capacity", child(impl, "sweep"))
        if kit_python is not None and "ladder" not in skip:
            part("kit capacity", kit_capacity)
        for impl in ("raw", "ours"):
            if impl not in skip and "sweep" not in skip:
                part(f"{impl} offered-load sweep", child(impl, "offer"))
        if kit_python is not None and "sweep" not in skip and params.kit_sweep:
            part("kit offered-load sweep", kit_offers)
        if "ours" not in skip and "overload" not in skip and params.overload:
            part("ours overload", child("ours", "overload"))
        if "fault" not in skip:
            part("ours fault run", child("ours", "fault"))
            if kit_python is not None and not args.quick:
                part("kit fault run", kit_outage)
    except BaseException:
        failed.append("interrupted")
        raise
    finally:
        sink.close()
        if failed:
            print(f"# logs of the subprocesses kept in {log_dir}", file=sys.stderr)
        else:
            shutil.rmtree(log_dir, ignore_errors=True)
    wall = time.monotonic() - started
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = cpu_seconds() + children.ru_utime + children.ru_stime
    other = 100 * ((host_busy_seconds() - host_started) - own) / wall
    log(
        f"wall time {wall:.1f} s; other processes used {other:.0f}% of one core meanwhile; "
        f"load average {load_average()}"
    )
    if args.json:
        record = {"params": asdict(params), "steps": steps, "capacities": capacities}
        record.update(faults=faults, offers=offers, overloads=overloads)
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    if args.plot and offers:
        title = f"Offered-load sweep, {os.cpu_count()} cores, {datetime.now(UTC):%Y-%m-%d}"
        plot_sweep(offers, Path(args.plot), title)
    if not args.quick:
        report(steps, capacities, faults, params)
    if offers or overloads:
        sweep_report(offers, overloads)
    print(result_line(capacities, faults, offers, overloads))
    if failed:
        raise SystemExit(1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short windows (<1 min)")
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["raw", "ours", "kit", "fault", "ladder", "sweep", "overload"],
        help="parts",
    )
    parser.add_argument("--sweep", nargs="*", type=int, help="offered loads (devices at 1 Hz)")
    parser.add_argument("--kit-sweep", nargs="*", type=int, help="the kit's offered loads")
    parser.add_argument("--sweep-window", type=float, help="seconds per sweep step")
    parser.add_argument("--plot", help="write the sweep's curve to this PNG (matplotlib)")
    parser.add_argument(
        "--overload", nargs="*", help="overload runs: devices, 'busy' suffix for a busy process"
    )
    parser.add_argument("--overload-window", type=float, help="seconds per overload run")
    parser.add_argument("--window", type=float, help="seconds per capacity step")
    parser.add_argument("--json", help="also write every record to this file")
    parser.add_argument("--kit-venv", default=str(DEFAULT_KIT_VENV), help="the kit's venv")
    parser.add_argument("--child", choices=["raw", "ours"], help=argparse.SUPPRESS)
    parser.add_argument(
        "--mode", choices=["sweep", "fault", "offer", "overload"], help=argparse.SUPPRESS
    )
    parser.add_argument("--sink-url", help=argparse.SUPPRESS)
    parser.add_argument("--admin-url", help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        params = Params.from_json(args.params)
        # The garbage collector as `serve` sets it (runtime/_collector.py). At the default,
        # 40,000 items in memory past capacity cost five full passes of about 60 ms each
        # in 10 s, each a pause of every lane; the raw loop runs with the same setting.
        from runtime._collector import tuned

        with tuned():
            trio.run(child_main, args.child, args.mode, args.sink_url, args.admin_url, params)
        return

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # run the finally blocks that stop the subprocesses

    signal.signal(signal.SIGTERM, terminate)
    try:
        parent_main(args)
    except KeyboardInterrupt:
        print("# interrupted; every subprocess stopped", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
