"""Side by side: our runtime and one built with piphi-runtime-kit-python 0.10.1, same workload.

Both runtimes are real processes serving the PiPhi routes on 127.0.0.1 and posting to the
same fast Core sink (bench/core_sink.py, trio + h11, its own process). The driver talks to
them only through HTTP, plus one stdin line to ask how many readings were generated:

- **kit**: bench/_kit_peer.py, FastAPI under uvicorn as the kit's README recommends
  (``create_runtime_starter``, ``apply_snapshot``, ``schedule_telemetry_delivery`` per
  reading), in a venv of its own that this script creates on first use
  (``.bench/kit-venv``, shared with bench/delivery.py).
- **ours**: bench/_ours_peer.py, the same simulated device as a ``DeviceActor``, run with
  ``piphi-runtime serve`` (default settings: memory durability, spool in a temp dir).

For each N (100, 1,000 and 5,000 devices, every one polled at the interval I), one run:

1. start the runtime and wait for ``/health``; note its idle RSS;
2. ``POST /config/sync`` with N configs (the latency is the *initial sync* row);
3. from t=5 s to the outage, ``GET /diagnostics`` every 100 ms on its own connection
   (the *p99* row; an answer slower than 5 s counts as 5 s and is reported);
4. at t=12 s, a re-sync with 1% of the configs changed (every 100th ``alias``);
5. at t=20 s the sink refuses connections for 20 s (Core gone), then comes back;
6. at t=60 s generation stops; the driver waits (bounded) for the backlog to drain.

Rows: *delivered/s* is the rate of distinct readings at the sink from t=5 s to the
outage (offered: N / I). *Lost* is readings generated minus distinct readings at the sink
after the drain (by device and ``metrics.seq``); *duplicated* is readings that arrived
more than once. *RSS per device* is (RSS just before the outage minus idle RSS) / N.
*CPU* is the runtime process's CPU time over the 60 s, as % of one core. *Caught up* is
the time from Core's return until every reading generated so far has arrived (a runtime
that lost readings never catches up); *rate back* is the first second after Core's return
with at least 90% of the offered rate arriving.

Usage: python bench/compare_piphi.py [--quick] [--sizes 100 1000 5000] [--interval 1]
       [--only ours|kit] [--kit-venv PATH] [--json FILE]

``--quick`` runs N=100 only, 16 s with a 4 s outage (under a minute once the kit venv
exists) and prints the table; the full run (about 12 minutes) also rewrites its section
of docs/benchmarks.md. Every subprocess is stopped when the bench ends, also on Ctrl-C or
an error, and exits by itself if the bench is killed (they watch their stdin).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from bench.delivery import (  # noqa: E402
    CONTAINER_ID,
    DEFAULT_KIT_VENV,
    KIT_PEER_SCRIPT,
    TOKEN,
    Service,
    Sink,
    cpu_seconds,
    ensure_kit_venv,
    host_busy_seconds,
    log,
)

DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN = "<!-- compare_piphi.py: begin (generated; edit the script, not this section) -->"
END = "<!-- compare_piphi.py: end -->"
DIAG_TIMEOUT = 5.0
SYNC_TIMEOUT = 30.0


@dataclass(frozen=True)
class Workload:
    sizes: tuple[int, ...]
    interval: float
    duration: float
    warmup: float  # /diagnostics probing and the delivered/s window start here
    resync_at: float
    down_at: float
    down_for: float
    drain: float  # bound on the wait for the backlog after generation stops
    diag_every: float

    @classmethod
    def full(cls) -> Workload:
        return cls((100, 1000, 5000), 1.0, 60.0, 5.0, 12.0, 20.0, 20.0, 120.0, 0.1)

    @classmethod
    def quick(cls) -> Workload:
        return cls((100,), 1.0, 16.0, 2.0, 4.0, 7.0, 4.0, 15.0, 0.1)


# -- the two runtimes ----------------------------------------------------------------------


class Peer:
    """One runtime under test: a subprocess with an HTTP base URL and a stdin counter."""

    name: str
    integration_id: str

    def __init__(self, service: Service, url: str) -> None:
        self.service = service
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=SYNC_TIMEOUT)
        self._lock = threading.Lock()  # one stdin question at a time
        self.generation = 0
        deadline = time.monotonic() + 30
        while True:  # bounded by the deadline
            with contextlib.suppress(httpx.HTTPError):
                if self.http.get("/health", timeout=2.0).is_success:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not healthy after 30 s\n{service.tail()}")
            time.sleep(0.05)

    def counters(self, command: str = "counters") -> dict[str, Any]:
        with self._lock:
            self.service.send(command)
            return self.service.json_line(10.0)

    def pending(self) -> int:
        """Readings the runtime still holds for Core (in memory, spooled or in flight)."""
        raise NotImplementedError

    def rss_kib(self) -> int:
        with open(f"/proc/{self.service.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def sync(self, devices: int, interval: float, changed: int = 0) -> float | None:
        """Send a snapshot of ``devices`` configs; every 100th has a new alias when
        ``changed``. Returns the seconds it took, or None if it took longer than the
        timeout."""
        self.generation += 1
        snapshot = {
            "container_id": CONTAINER_ID,
            "integration_id": self.integration_id,
            "generation": self.generation,
            "reason": "bench",
            "configs": [
                {
                    "id": f"cfg{i}",
                    "config_id": f"cfg{i}",
                    "device_id": f"dev{i}",
                    "container_id": CONTAINER_ID,
                    "integration_id": self.integration_id,
                    "poll_interval_seconds": interval,
                    "alias": f"sensor {i}" + (f" v{changed}" if changed and i % 100 == 0 else ""),
                }
                for i in range(devices)
            ],
        }
        headers = {"X-Container-Id": CONTAINER_ID, "X-PiPhi-Integration-Token": TOKEN}
        started = time.monotonic()
        try:
            response = self.http.post("/config/sync", json=snapshot, headers=headers)
        except httpx.TimeoutException:
            return None
        response.raise_for_status()
        return time.monotonic() - started

    def close(self) -> None:
        self.http.close()
        self.service.close()


class KitPeer(Peer):
    name = "kit"
    integration_id = "bench-kit-peer"

    def __init__(self, python: Path, sink_url: str, log_dir: Path, label: str) -> None:
        env = dict(os.environ, PIPHI_CORE_BASE_URL=sink_url, PYTHONDONTWRITEBYTECODE="1")
        for key in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
            env.pop(key, None)
        service = Service(label, [str(python), str(KIT_PEER_SCRIPT)], log_dir, env)
        try:
            hello = service.json_line(30.0)
            self.versions: dict[str, str] = hello["versions"]
            super().__init__(service, f"http://127.0.0.1:{hello['port']}")
        except BaseException:
            service.close()
            raise

    def pending(self) -> int:
        return int(self.counters()["pending"])


class OursPeer(Peer):
    name = "ours"
    integration_id = "bench-ours-peer"

    def __init__(self, sink_url: str, log_dir: Path, label: str) -> None:
        state = log_dir / f"{label}-state"
        env = dict(
            os.environ,
            PIPHI_CORE_BASE_URL=sink_url,
            PIPHI_STATE_DIR=str(state),
            PIPHI_CONFIG_SNAPSHOT_PATH=str(state / "no-mount.json"),
            PIPHI_LOG_LEVEL="WARNING",
            BENCH_PEER_CONTROL="1",
        )
        for key in ("PIPHI_CONTAINER_ID", "PIPHI_INTEGRATION_INTERNAL_TOKEN", "PORT"):
            env.pop(key, None)
        argv = [
            sys.executable,
            "-c",
            "import sys; from runtime._cli import main; sys.exit(main())",
            *("serve", "bench._ours_peer:integration", "--host", "127.0.0.1", "--port", "0"),
        ]
        service = Service(label, argv, log_dir, env)
        try:
            deadline = time.monotonic() + 30
            line = ""
            while not line.startswith("serving "):  # bounded by the deadline
                line = service.line(max(0.01, deadline - time.monotonic())).strip()
            super().__init__(service, line.rsplit(" on ", 1)[1].split()[0])
        except BaseException:
            service.close()
            raise

    def pending(self) -> int:
        # A device filter that matches nothing: the runtime-wide figures without any
        # per-actor records.
        body = self.http.get("/diagnostics", params={"device_id": "-"}, timeout=10).json()
        delivery = body["diagnostics"]["delivery"]
        return int(delivery["queue_depth"] + delivery["spool_depth"] + delivery["in_flight"])


# -- one run -------------------------------------------------------------------------------


class Background:
    """A daemon thread that calls ``step`` until stopped; ``step`` paces itself."""

    def __init__(self, name: str, step: Callable[[threading.Event], None]) -> None:
        self.stop = threading.Event()
        self.errors: list[str] = []

        def loop() -> None:
            while not self.stop.is_set():  # ends when the run stops it
                try:
                    step(self.stop)
                except Exception as exc:  # reported in the run's record
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    self.stop.wait(0.5)

        self.thread = threading.Thread(target=loop, name=name, daemon=True)
        self.thread.start()

    def join(self) -> None:
        self.stop.set()
        self.thread.join(timeout=DIAG_TIMEOUT + 5)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def distinct(stats: dict[str, Any]) -> int:
    """Distinct readings at the sink, by device and seq (the same count for both)."""
    return int(stats["sum_max_seq"] - stats["gaps"])


def run_one(peer: Peer, sink: Sink, n: int, w: Workload) -> dict[str, Any]:
    rate = n / w.interval
    idle_rss = peer.rss_kib()
    sink.post("/admin/reset")
    t0 = time.monotonic()
    cpu0 = peer.service.cpu_seconds()
    initial_sync = peer.sync(n, w.interval)

    samples: list[tuple[float, int, int]] = []  # (t, generated, distinct at the sink)

    def sample(stop: threading.Event) -> None:
        generated = int(peer.counters()["generated"])
        samples.append((time.monotonic() - t0, generated, distinct(sink.stats())))
        stop.wait(0.5)

    latencies: list[float] = []
    diag_http = httpx.Client(base_url=peer.url, timeout=DIAG_TIMEOUT)

    def probe(stop: threading.Event) -> None:
        now = time.monotonic() - t0
        if now < w.warmup:
            stop.wait(w.warmup - now)
            return
        if now >= w.down_at:
            stop.set()
            return
        started = time.monotonic()
        try:
            diag_http.get("/diagnostics").raise_for_status()
            latencies.append(time.monotonic() - started)
        except httpx.TimeoutException:
            latencies.append(DIAG_TIMEOUT)
        stop.wait(max(0.0, w.diag_every - (time.monotonic() - started)))

    resync: list[float | None] = []

    def resync_step(stop: threading.Event) -> None:
        if not stop.wait(max(0.0, w.resync_at - (time.monotonic() - t0))):
            resync.append(peer.sync(n, w.interval, changed=1))
        stop.set()

    def at(t: float) -> None:
        time.sleep(max(0.0, t0 + t - time.monotonic()))

    threads = [
        Background(f"{peer.name}-sampler", sample),
        Background(f"{peer.name}-diagnostics", probe),
        Background(f"{peer.name}-resync", resync_step),
    ]
    try:
        at(w.down_at)
        loaded_rss = peer.rss_kib()
        sink.post("/admin/down", seconds=w.down_for, mode="refuse")
        at(w.duration)
        generated = int(peer.counters("pause")["generated"])
        t1 = time.monotonic()
        cpu1 = peer.service.cpu_seconds()
        end_rss = peer.rss_kib()
        while True:  # bounded by w.drain
            stats = sink.stats()
            waited = time.monotonic() - t1
            if distinct(stats) >= generated or waited >= w.drain:
                break
            if peer.pending() == 0:
                time.sleep(0.2)  # the last responses may still be on their way
                stats = sink.stats()
                waited = time.monotonic() - t1
                break
            time.sleep(0.25)
        drained_at = w.duration + waited
        samples.append((drained_at, generated, distinct(stats)))
    finally:
        for thread in threads:
            thread.join()
        diag_http.close()
    timeline = dict(sink.stats(timeline=True)["timeline"])
    window = range(math.ceil(w.warmup), math.floor(w.down_at))
    delivered_per_s = sum(timeline.get(s, 0) for s in window) / len(window)
    t_up = w.down_at + w.down_for
    slack = max(10, rate / 20)
    caught_up = next(
        (t - t_up for t, gen, got in samples if t >= t_up and gen - got <= slack), None
    )
    rate_back = next(
        (
            s + 1 - t_up
            for s in range(math.ceil(t_up), math.ceil(drained_at))
            if timeline.get(s, 0) >= 0.9 * rate
        ),
        None,
    )
    got = distinct(stats)
    return {
        "runtime": peer.name,
        "devices": n,
        "interval_s": w.interval,
        "offered_per_s": rate,
        "delivered_per_s": round(delivered_per_s, 1),
        "generated": generated,
        "delivered": got,
        "lost": generated - got,
        "duplicated": int(stats["telemetry"] - got),
        "rss_idle_mib": round(idle_rss / 1024, 1),
        "rss_loaded_mib": round(loaded_rss / 1024, 1),
        "rss_end_mib": round(end_rss / 1024, 1),
        "rss_per_device_kib": round((loaded_rss - idle_rss) / n, 2),
        "cpu_pct": round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
        "initial_sync_ms": None if initial_sync is None else round(initial_sync * 1000, 1),
        "resync_ms": None if not resync or resync[0] is None else round(resync[0] * 1000, 1),
        "diagnostics_p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
        "diagnostics_p99_ms": round(1000 * percentile(latencies, 0.99), 1) if latencies else None,
        "diagnostics_samples": len(latencies),
        "diagnostics_timeouts": sum(1 for x in latencies if x >= DIAG_TIMEOUT),
        "caught_up_s": None if caught_up is None else round(caught_up, 1),
        "rate_back_s": rate_back,
        "drained_after_s": round(waited, 1),
        "errors": [e for thread in threads for e in thread.errors],
    }


# -- the report ----------------------------------------------------------------------------

# (label, record key, format, which is better: "high" or "low")
ROWS: tuple[tuple[str, str, str, str], ...] = (
    ("delivered readings/s (offered N/I)", "delivered_per_s", "{:,.0f}", "high"),
    ("lost readings", "lost", "{:,}", "low"),
    ("duplicated readings", "duplicated", "{:,}", "low"),
    ("RSS per device, KiB", "rss_per_device_kib", "{:,.1f}", "low"),
    ("CPU, % of one core", "cpu_pct", "{:.0f}", "low"),
    ("/config/sync, initial, ms", "initial_sync_ms", "{:,.0f}", "low"),
    ("/config/sync, 1% changed, ms", "resync_ms", "{:,.0f}", "low"),
    ("/diagnostics p99 under load, ms", "diagnostics_p99_ms", "{:,.0f}", "low"),
    ("caught up after the outage, s", "caught_up_s", "{:.1f}", "low"),
    ("rate back after the outage, s", "rate_back_s", "{:.0f}", "low"),
)


def cell(record: dict[str, Any] | None, key: str, form: str) -> tuple[str, float | None]:
    if record is None:
        return "n/a", None
    value = record.get(key)
    if value is None:  # a recovery that never came, or a sync that timed out
        late = "never" if key in ("caught_up_s", "rate_back_s") else f"> {SYNC_TIMEOUT:g} s"
        return late, math.inf
    if key == "diagnostics_p99_ms" and record["diagnostics_timeouts"]:
        return f"> {DIAG_TIMEOUT * 1000:,.0f} ({record['diagnostics_timeouts']} timeouts)", value
    return form.format(value), float(value)


def table(records: list[dict[str, Any]], sizes: tuple[int, ...], interval: float) -> str:
    by = {(r["runtime"], r["devices"]): r for r in records}
    head = ["metric"]
    for n in sizes:
        head += [f"N={n:,} ours", f"N={n:,} kit"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, key, form, better in ROWS:
        row = [label.replace("N/I", f"N/{interval:g} s")]
        for n in sizes:
            (ours, a), (kit, b) = (
                cell(by.get(("ours", n)), key, form),
                cell(by.get(("kit", n)), key, form),
            )
            if a is not None and b is not None and a != b:
                if (a > b) == (better == "high"):
                    ours = f"**{ours}**"
                else:
                    kit = f"**{kit}**"
            row += [ours, kit]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def result_line(records: list[dict[str, Any]]) -> str:
    def pick(runtime: str, key: str) -> str:
        values = [r[key] for r in records if r["runtime"] == runtime]
        if not values:
            return "na"
        return f"{values[0]:g}" if isinstance(values[0], float) else str(values[0])

    return (
        f"RESULT ours_delivered_per_s={pick('ours', 'delivered_per_s')} "
        f"kit_delivered_per_s={pick('kit', 'delivered_per_s')} "
        f"ours_lost={pick('ours', 'lost')} kit_lost={pick('kit', 'lost')}"
    )


def write_docs(section: str) -> None:
    text = DOCS.read_text()
    block = f"{BEGIN}\n{section}\n{END}"
    if BEGIN in text and END in text:
        before, rest = text.split(BEGIN, 1)
        text = before + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    DOCS.write_text(text)


# -- main ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="N=100, 16 s (<1 min)")
    parser.add_argument("--sizes", type=int, nargs="+", help="device counts")
    parser.add_argument("--interval", type=float, help="poll interval, seconds")
    parser.add_argument("--only", choices=["ours", "kit"], help="run one runtime only")
    parser.add_argument("--kit-venv", default=str(DEFAULT_KIT_VENV), help="the kit's venv")
    parser.add_argument("--json", help="also write every record to this file")
    args = parser.parse_args()
    w = Workload.quick() if args.quick else Workload.full()
    w = replace(w, sizes=tuple(args.sizes or w.sizes), interval=args.interval or w.interval)

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # run the finally blocks that stop the subprocesses

    signal.signal(signal.SIGTERM, terminate)
    started, host_started = time.monotonic(), host_busy_seconds()
    kit_python = None
    if args.only != "ours":
        try:
            kit_python = ensure_kit_venv(Path(args.kit_venv))
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            raise SystemExit(
                f"could not set up the kit's venv at {args.kit_venv}: {exc}\n"
                "It needs the package index (pip install); run with --only ours to skip the kit."
            ) from None
    log_dir = Path(tempfile.mkdtemp(prefix="compare-piphi-"))
    log(
        f"{os.cpu_count()} cores, python {platform.python_version()}; "
        f"N={list(w.sizes)} at {w.interval:g} s; {w.duration:g} s runs, Core down "
        f"{w.down_at:g}-{w.down_at + w.down_for:g} s; logs in {log_dir}"
    )
    records: list[dict[str, Any]] = []
    versions: dict[str, str] = {}
    failed = False
    sink = Sink(log_dir, lifetime=3600.0)
    try:
        for n in w.sizes:
            for name in ("ours", "kit"):
                if args.only not in (None, name):
                    continue
                label = f"{name}-{n}"
                peer: Peer = (
                    OursPeer(sink.url, log_dir, label)
                    if name == "ours"
                    else KitPeer(kit_python or Path(), sink.url, log_dir, label)
                )
                try:
                    if isinstance(peer, KitPeer):
                        versions = peer.versions
                    record = run_one(peer, sink, n, w)
                finally:
                    peer.close()
                records.append(record)
                log(json.dumps(record))
    except KeyboardInterrupt:
        failed = True
        print("# interrupted; every subprocess stopped", file=sys.stderr)
    finally:
        sink.close()
    wall = time.monotonic() - started
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = cpu_seconds() + children.ru_utime + children.ru_stime
    other = 100 * ((host_busy_seconds() - host_started) - own) / wall
    rendered = table(records, w.sizes, w.interval)
    print(rendered)
    log(f"wall time {wall:.0f} s; other processes used {other:.0f}% of one core meanwhile")
    if args.json:
        Path(args.json).write_text(json.dumps({"workload": asdict(w), "records": records}))
    if not args.quick and not failed and args.only is None:
        when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        section = "\n".join(
            [
                f"Run {when}: {os.cpu_count()} cores, Python {platform.python_version()}; "
                f"kit stack {', '.join(f'{k} {v}' for k, v in versions.items())}; other "
                f"processes used {other:.0f}% of one core during the run.",
                "",
                "```bash",
                ".venv/bin/python bench/compare_piphi.py            # about 12 minutes",
                ".venv/bin/python bench/compare_piphi.py --quick    # N=100, 16 s: RESULT only",
                "```",
                "",
                rendered,
            ]
        )
        write_docs(section)
    if not failed:
        shutil.rmtree(log_dir, ignore_errors=True)
    print(result_line(records))
    if failed:
        raise SystemExit(130)


if __name__ == "__main__":
    main()
