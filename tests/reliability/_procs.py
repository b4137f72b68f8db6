"""Real processes for the reliability suite (also used by tests/test_serve.py).

``piphi-runtime serve examples.simulated_home:integration`` runs as a subprocess on
127.0.0.1 against a Core served in the test's own trio loop (``LiveCore``, a FakeCore that
also notes when each payload it stored was sent). ``LiveRuntime`` is the test's side of
one such process: its URL, an HTTP client sending Core's headers, and the reads the
scenarios make. Real time throughout: every wait here is bounded.

Counting loss exactly: every payload carries a ``telemetry_id`` or ``event_id`` fixed when
the runtime accepted it. Once the devices are quiet (``quiesce``) and the outbox has
nothing left (``settle``), the ids Core stored must be exactly as many as the runtime
says it accepted, overall and per config (``assert_exactly_once``).
"""

from __future__ import annotations

import inspect
import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TextIO

import attrs
import httpx
import trio

from runtime.delivery import CoreClient, OutboxSettings
from runtime.testing import Answer, FakeCore, snapshot_payload
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent.parent
CLI = [sys.executable, "-c", "import sys; from runtime._cli import main; sys.exit(main())"]
SIMULATED_HOME = "examples.simulated_home:integration"
SERVE = [*CLI, "serve", SIMULATED_HOME]

TOKEN = "reliability-token"
CONTAINER = "ctr-reliability"
HEADERS = {"X-Container-Id": CONTAINER, "X-PiPhi-Integration-Token": TOKEN}
KINDS = ("thermostat", "plug", "air_quality")
ACTOR_OF_KIND = {
    "thermostat": "SimulatedThermostat",
    "plug": "SimulatedPlug",
    "air_quality": "SimulatedAirQuality",
}
LANES: int = inspect.signature(CoreClient).parameters["connections"].default
"""The outbox's senders under ``serve``: one per connection of CoreClient (its default)."""
CLIENT_TIMEOUT: float = inspect.signature(CoreClient).parameters["timeout"].default
"""How long CoreClient waits for Core under ``serve`` (its default)."""
RETRY_CAP = OutboxSettings().retry.max_delay
"""The outbox's longest wait between two attempts at an item (README, Delivery, Retries)."""
MEMORY_LIMIT = OutboxSettings().memory_limit
"""Items the outbox holds in memory at most (README, Delivery, "Durability windows")."""
HEALTH_BOUND = 1.0
"""How long a ``GET /health`` may take while anything else goes wrong, in seconds."""
OFFLINE = {"offline_every": 1, "offline_for": 1, "crash_every": 0, "slow_every": 0}
"""Trouble settings that make every poll find the device offline: no more telemetry."""


# -- the runtime as a process -------------------------------------------------------------


@asynccontextmanager
async def runtime_process(
    env: Mapping[str, str],
    *,
    log: Path | None = None,
    target: str | None = None,
    nofile: int | None = None,
) -> AsyncIterator[tuple[trio.Process, str]]:
    """``piphi-runtime serve`` of ``target`` on 127.0.0.1, port 0; yields the process and
    its URL.

    Its stderr (the log) goes to ``log`` when given. ``target`` replaces the simulated
    home (``module:integration``); ``nofile`` lowers the child's file limit (only the
    child's). Killed on the way out if still running.
    """
    args = [*(SERVE if target is None else [*CLI, "serve", target]), "--host", "127.0.0.1"]
    args += ["--port", "0"]
    stderr: TextIO | int = subprocess.DEVNULL if log is None else log.open("a")

    def limit_files() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    try:
        proc = await trio.lowlevel.open_process(
            args,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=dict(env),
            cwd=ROOT,
            preexec_fn=limit_files,
        )
    finally:
        if not isinstance(stderr, int):
            stderr.close()  # the child has its own copy
    try:
        assert proc.stdout is not None
        buffer = b""
        with trio.fail_after(30):
            while b"serving" not in buffer or not buffer.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(4096)
                assert chunk, f"the runtime exited before serving (its log: {log})"
                buffer += chunk
        url = buffer.decode().split(" on ")[-1].split()[0]
        yield proc, url
    finally:
        if proc.returncode is None:
            proc.kill()
        with trio.move_on_after(10):
            await proc.wait()


async def stop(proc: trio.Process) -> tuple[int, float]:
    """SIGTERM; the exit code and how long the process took to exit."""
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    with trio.fail_after(20):
        code = await proc.wait()
    return code, time.monotonic() - started


def spooled_ids(state: Path) -> set[str]:
    """The ids of the payloads in a (stopped or killed) runtime's spool."""
    con = sqlite3.connect(state / "spool.db")
    try:
        rows = con.execute("SELECT payload FROM items").fetchall()
    finally:
        con.close()
    return {item_id(json.loads(p)) for (p,) in rows}


def runtime_env(core: FakeCore, state: Path) -> dict[str, str]:
    """A managed runtime's environment: Core's URL, a state directory, no mounted snapshot."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPHI_")}
    env.update(
        PIPHI_CORE_BASE_URL=core.url,
        PIPHI_STATE_DIR=str(state),
        PIPHI_CONFIG_SNAPSHOT_PATH=str(state.parent / "no-mount.json"),
        PIPHI_INTEGRATION_INTERNAL_TOKEN=TOKEN,
        PIPHI_LOG_LEVEL="WARNING",
    )
    return env


def device(
    n: int, *, kind: str | None = None, interval: float = 0.2, **fields: Any
) -> dict[str, Any]:
    """Simulated device ``dev-<n>`` (config id ``cfg-<n>``), polled every ``interval`` s."""
    return {
        "id": f"dev-{n}",
        "config_id": f"cfg-{n}",
        "device_type": kind or KINDS[n % len(KINDS)],
        "poll_interval_seconds": interval,
        **fields,
    }


@attrs.frozen
class HealthSample:
    at: float
    """trio time the request was sent."""
    latency: float | None
    """Seconds to the answer; None if there was none within HEALTH_BOUND."""
    code: int | None
    link: str | None
    status: str | None


@attrs.define
class LiveRuntime:
    """The test's side of one ``piphi-runtime serve`` process."""

    proc: trio.Process
    url: str
    http: httpx.AsyncClient
    generation: int = 0
    """The highest snapshot generation sent so far."""

    async def sync(
        self, configs: Iterable[Mapping[str, Any]], *, generation: int | None = None, **extra: Any
    ) -> dict[str, Any]:
        """POST a snapshot (the next generation unless given); returns the runtime's answer."""
        if generation is None:
            generation = self.generation + 1
        self.generation = max(self.generation, generation)
        body = snapshot_payload(*configs, generation=generation, container_id=CONTAINER, **extra)
        reply = await self.http.post("/config/sync", json=body)
        assert reply.status_code == 200, reply.text
        answer: dict[str, Any] = reply.json()
        return answer

    async def diagnostics(self) -> dict[str, Any]:
        reply = await self.http.get("/diagnostics")
        assert reply.status_code == 200, reply.text
        found: dict[str, Any] = reply.json()["diagnostics"]
        return found

    async def health(self) -> HealthSample:
        """One ``GET /health``, bounded by HEALTH_BOUND (a late answer is a sample too)."""
        sent = trio.current_time()
        with trio.move_on_after(HEALTH_BOUND):
            reply = await self.http.get("/health")
            latency, body = trio.current_time() - sent, reply.json()
            link = body.get("runtime", {}).get("core_link", {}).get("state")
            return HealthSample(sent, latency, reply.status_code, link, body.get("status"))
        return HealthSample(sent, None, None, None, None)

    async def wait_for(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        *,
        timeout: float,  # noqa: ASYNC109 - real seconds, bounded here
        what: str,
    ) -> dict[str, Any]:
        """Poll /diagnostics until ``predicate`` holds; fail after ``timeout`` seconds."""
        last: dict[str, Any] = {}
        with trio.move_on_after(timeout):
            while True:
                last = await self.diagnostics()
                if predicate(last):
                    return last
                await trio.sleep(0.1)
        raise AssertionError(f"{what}: not within {timeout} s; delivery: {last.get('delivery')}")

    async def terminate(self) -> None:
        """SIGTERM: the runtime exits 0 within its grace period."""
        code, took = await stop(self.proc)
        assert code == 0, f"the runtime exited {code} on SIGTERM"
        assert took < 10, f"shutdown took {took:.1f} s"


@asynccontextmanager
async def live_runtime(
    env: Mapping[str, str], log: Path, *, target: str = SIMULATED_HOME
) -> AsyncIterator[LiveRuntime]:
    async with (
        runtime_process(env, log=log, target=target) as (proc, url),
        httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=10) as http,
    ):
        yield LiveRuntime(proc, url, http)


@asynccontextmanager
async def watching_health(rt: LiveRuntime, every: float = 0.2) -> AsyncIterator[list[HealthSample]]:
    """Sample /health every ``every`` s while the block runs; yields the growing list."""
    samples: list[HealthSample] = []

    async def watch() -> None:
        while True:
            samples.append(await rt.health())
            await trio.sleep(every)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        yield samples
        nursery.cancel_scope.cancel()


def assert_responsive(samples: list[HealthSample]) -> float:
    """Every /health answered 200 within HEALTH_BOUND; returns the slowest answer."""
    assert samples, "no /health sample was taken"
    late = [s for s in samples if s.latency is None]
    assert not late, f"{len(late)} of {len(samples)} /health requests took over {HEALTH_BOUND} s"
    assert {s.code for s in samples} == {200}, [s.code for s in samples]
    return max(s.latency or 0.0 for s in samples)


# -- Core ------------------------------------------------------------------------------------


def item_id(body: Mapping[str, Any]) -> str:
    """The id a payload keeps across redeliveries: ``telemetry_id`` or ``event_id``."""
    return str(body.get("telemetry_id") or body["event_id"])


class LiveCore(FakeCore):
    """A FakeCore that also notes, for each payload it stored, when its request came in."""

    def __init__(self) -> None:
        super().__init__()
        self.stored: list[tuple[str, float]] = []
        """(item id, trio time its request arrived), one per payload stored."""

    async def respond(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> Answer | None:
        arrived = trio.current_time()
        answer = await super().respond(method, target, headers, body)
        if answer is not None and 200 <= answer[0] < 300 and method == "POST" and body:
            self.stored.append((item_id(json.loads(body)), arrived))
        return answer

    def payloads(self) -> list[dict[str, Any]]:
        """Every telemetry and event payload stored, redeliveries included."""
        return self.telemetry() + self.events()

    def ids(self) -> Counter[str]:
        return Counter(item_id(b) for b in self.payloads())

    def readings_per_config(self) -> Counter[str]:
        """How many distinct readings each config has delivered."""
        unique = {b["telemetry_id"]: b["config_id"] for b in self.telemetry()}
        return Counter(unique.values())

    def readings_of(self, device_id: str) -> dict[str, dict[str, Any]]:
        """One device's telemetry by telemetry_id (a redelivery counts once)."""
        return {b["telemetry_id"]: b for b in self.telemetry() if b["device_id"] == device_id}


# -- scenario steps and loss accounting ------------------------------------------------------


async def start_devices(
    rt: LiveRuntime,
    core: LiveCore,
    configs: list[dict[str, Any]],
    *,
    delivering: Iterable[str] | None = None,
) -> None:
    """Snapshot ``configs``; wait until each of ``delivering`` (device ids, default: every
    device) has a reading at Core."""
    await rt.sync(configs)
    wanted = set(delivering if delivering is not None else (c["id"] for c in configs))
    await wait_until(
        lambda: wanted <= {b["device_id"] for b in core.telemetry()}, timeout=15, step=0.1
    )


async def quiesce(rt: LiveRuntime, configs: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Keep every device configured but make it offline: after its first poll fails (one
    ``device.unavailable`` event) it emits nothing more, so the count of accepted items
    stops moving and can be compared with what Core stored."""
    quiet = [{**c, **OFFLINE} for c in configs]
    answer = await rt.sync(quiet)
    assert answer["status"] == "synced", answer
    assert sorted(answer["active_config_ids"]) == sorted(c["id"] for c in quiet), answer
    return await rt.wait_for(
        lambda d: all(a["state"] == "unavailable" for a in d["actors"]),
        timeout=15,
        what="every device offline after the quiescing snapshot",
    )


async def settle(rt: LiveRuntime, *, timeout: float = 40) -> dict[str, Any]:  # noqa: ASYNC109
    """Wait until the outbox holds nothing (memory, spool, in flight) and its accepted count
    is the same on two reads in a row; returns the last /diagnostics."""
    previous: list[int] = []

    def settled(diagnostics: dict[str, Any]) -> bool:
        stats = diagnostics["delivery"]
        empty = not (stats["queue_depth"] or stats["spool_depth"] or stats["in_flight"])
        stable = previous == [stats["accepted"]]
        previous[:] = [stats["accepted"]] if empty else []
        return empty and stable

    return await rt.wait_for(settled, timeout=timeout, what="the outbox settled")


def assert_exactly_once(core: LiveCore, diagnostics: dict[str, Any]) -> Counter[str]:
    """Every item the runtime accepted reached Core, by id, overall and per config; nothing
    was dropped or refused. Returns the ids Core stored more than once (with counts)."""
    stats = diagnostics["delivery"]
    assert stats["dropped"] == 0 and stats["rejected"] == 0, stats
    ids = core.ids()
    assert len(ids) == stats["accepted"], (
        f"accepted {stats['accepted']}, Core stored {len(ids)} distinct ids: "
        f"{stats['accepted'] - len(ids)} lost"
    )
    assert stats["delivered"] == stats["accepted"], stats
    by_config: dict[str, set[str]] = {}
    for body in core.payloads():
        by_config.setdefault(body["config_id"], set()).add(item_id(body))
    for actor in diagnostics["actors"]:
        figures = actor["delivery"]
        arrived = len(by_config.get(actor["config_id"], ()))
        assert figures["accepted"] == figures["delivered"] == arrived, (actor["config_id"], figures)
    return Counter({i: n for i, n in ids.items() if n > 1})


async def drain_and_account(
    rt: LiveRuntime, core: LiveCore, configs: Iterable[Mapping[str, Any]]
) -> tuple[dict[str, Any], Counter[str]]:
    """Core is well again: the devices go quiet, the outbox (spool included) drains, and
    everything accepted arrived exactly once (``assert_exactly_once``). Then SIGTERM.
    Returns the last /diagnostics and the ids Core stored more than once."""
    assert rt.proc.returncode is None, "the runtime died"
    await quiesce(rt, configs)
    final = await settle(rt)
    dups = assert_exactly_once(core, final)
    await rt.terminate()
    return final, dups


def report(name: str, **figures: Any) -> None:
    """One line of figures per scenario (shown with ``pytest -s`` or on failure)."""
    print(f"[reliability] {name}: " + " ".join(f"{k}={v}" for k, v in figures.items()))
