"""bench/core_sink.py's own CPU per request: its hand-written parser against h11, one run.

Starts two sinks (``bench/core_sink.py`` and ``BENCH_SINK_H11=1 bench/core_sink.py``) and
posts the same telemetry bodies to each in alternating rounds: ``--requests`` per round
over 4 keep-alive connections (one client thread each, blocking sockets, requests built
beforehand, heads as the runtime's ``CoreClient`` writes them), in two patterns:

- ``one``: each connection sends a request and waits for its answer (as httpx does, and a
  lane of the outbox below its pipelining threshold);
- ``pipelined``: each connection writes ``--depth`` requests at once, then reads their
  answers (as a lane does once it pipelines, under load).

Per round the sink's CPU (``cpu_s`` from its ``/admin/stats``: user + system of the whole
process) over the requests it answered; the sink resets between rounds, so each round
counts the same new readings (ages, ids, seqs). The client runs on the other core; with
other processes on the machine the figures wobble, hence the medians over ``--rounds``.

Usage: python bench/sink_cost.py [--quick] [--requests N] [--rounds R] [--depth D]

``--quick`` (4,000 requests a round, 3 rounds) takes about 15 s and ends with one RESULT
line, as the full run (20,000 requests, 5 rounds) does.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.core_sink import OK  # noqa: E402
from bench.delivery import (  # noqa: E402
    CONTAINER_ID,
    TELEMETRY_PATH,
    TOKEN,
    Service,
    encode,
    load_average,
)

CONNECTIONS = 4
PATTERNS = ("one", "pipelined")


class RunningSink:
    """One bench/core_sink.py process and its admin client."""

    def __init__(self, parser: str, log_dir: Path) -> None:
        env = dict(os.environ, BENCH_SINK_H11="1" if parser == "h11" else "0")
        argv = [sys.executable, str(HERE / "core_sink.py"), "--exit-on-stdin-eof"]
        self.service = Service(f"sink-{parser}", argv, log_dir, env)
        ports = self.service.json_line(15.0)
        if ports.get("parser") != parser:
            raise RuntimeError(f"asked for the {parser} parser, got {ports.get('parser')}")
        self.port = int(ports["data_port"])
        self.admin = httpx.Client(base_url=f"http://127.0.0.1:{ports['admin_port']}")

    def stats(self) -> dict[str, Any]:
        response = self.admin.get("/admin/stats")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def close(self) -> None:
        self.admin.close()
        self.service.close()


def build_requests(bodies: list[bytes], port: int) -> list[bytes]:
    head = (
        f"POST {TELEMETRY_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nX-Container-Id: {CONTAINER_ID}\r\n"
        f"X-PiPhi-Integration-Token: {TOKEN}\r\nContent-Length: "
    ).encode()
    return [head + b"%d\r\n\r\n" % len(body) + body for body in bodies]


def client(port: int, requests: list[bytes], depth: int, errors: list[str]) -> None:
    """Send ``requests`` on one connection, ``depth`` at a time; read every answer."""
    try:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for at in range(0, len(requests), depth):
                batch = requests[at : at + depth]
                sock.sendall(b"".join(batch))
                want, got = len(OK) * len(batch), 0
                while got < want:
                    data = sock.recv(65536)
                    if not data:
                        raise ConnectionError("the sink closed the connection")
                    got += len(data)
    except OSError as exc:
        errors.append(repr(exc))


def one_round(sink: RunningSink, requests: list[bytes], depth: int) -> dict[str, float]:
    sink.admin.post("/admin/reset").raise_for_status()
    before = sink.stats()
    errors: list[str] = []
    shares = [requests[i::CONNECTIONS] for i in range(CONNECTIONS)]
    threads = [
        threading.Thread(target=client, args=(sink.port, share, depth, errors)) for share in shares
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    after = sink.stats()
    if errors:
        raise RuntimeError(f"client errors: {errors[:3]}")
    answered = after["unique"] - before["unique"]
    if answered != len(requests):
        raise RuntimeError(f"{answered} of {len(requests)} readings counted")
    cpu = after["cpu_s"] - before["cpu_s"]
    return {
        "us_per_request": 1e6 * cpu / answered,
        "per_s": answered / wall,
        "sink_cpu_pct": 100 * cpu / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="4,000 requests, 3 rounds")
    parser.add_argument("--requests", type=int, help="requests per round")
    parser.add_argument("--rounds", type=int, help="rounds per parser and pattern")
    parser.add_argument("--depth", type=int, default=16, help="requests per write, pipelined")
    args = parser.parse_args()
    requests = args.requests or (4000 if args.quick else 20000)
    rounds = args.rounds or (3 if args.quick else 5)
    load0 = load_average()
    print(
        f"# {os.cpu_count()} cores, python {sys.version.split()[0]}; {requests} requests a "
        f"round over {CONNECTIONS} connections, {rounds} rounds, depth {args.depth}; "
        f"load average {load0}",
        flush=True,
    )
    now = time.time()
    bodies = [encode(i % 1000, i // 1000 + 1, now) for i in range(requests)]
    log_dir = Path(os.environ.get("TMPDIR", "/tmp"))
    sinks = {}
    try:
        for name in ("fast", "h11"):
            sinks[name] = RunningSink(name, log_dir)
        built = {name: build_requests(bodies, sink.port) for name, sink in sinks.items()}
        results: dict[tuple[str, str], list[dict[str, float]]] = {}
        for _ in range(rounds):
            for pattern in PATTERNS:
                depth = 1 if pattern == "one" else args.depth
                for name, sink in sinks.items():
                    row = one_round(sink, built[name], depth)
                    results.setdefault((name, pattern), []).append(row)
                    print(
                        f"# {name:4} {pattern:9} {row['us_per_request']:7.1f} us/request "
                        f"{row['per_s']:8.0f} requests/s  sink {row['sink_cpu_pct']:3.0f}% "
                        f"of a core",
                        flush=True,
                    )
    finally:
        for sink in sinks.values():
            sink.close()
    print()
    print("| parser | pattern | sink CPU µs/request (median) | min-max | requests/s (median) |")
    print("|---|---|---|---|---|")
    figures: dict[str, str] = {}
    for pattern in PATTERNS:
        for name in ("fast", "h11"):
            rows = results[(name, pattern)]
            cost = [r["us_per_request"] for r in rows]
            rate = statistics.median(r["per_s"] for r in rows)
            median = statistics.median(cost)
            print(
                f"| {name} | {pattern} | {median:.1f} | {min(cost):.1f}-{max(cost):.1f} "
                f"| {rate:,.0f} |"
            )
            figures[f"{name}_us_{pattern}"] = f"{median:.1f}"
            figures[f"{name}_per_s_{pattern}"] = f"{rate:.0f}"
        fast, slow = (float(figures[f"{n}_us_{pattern}"]) for n in ("fast", "h11"))
        figures[f"ratio_{pattern}"] = f"{fast / slow:.2f}"
    print()
    figures["load"] = f"{load0}-{load_average()}"
    print("RESULT " + " ".join(f"{key}={value}" for key, value in figures.items()))


if __name__ == "__main__":
    main()
