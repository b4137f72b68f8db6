"""CPU per packet of N rtl_433 sensors on one MQTT source stream: the shared source hub
against one connection per actor, in the same invocation, against a real mosquitto.

- ``hub``: ``Integration(sources=[MqttSource(...)])``'s machinery: one connection and
  subscription (``open_sources``), each packet parsed once and routed by its
  ``device_hint`` to one of N ``SourceDeviceActor``s.
- ``per-actor``: today's ``actors.mqtt_source.MqttSourceActor``: N connections and
  subscriptions, so every packet is received and scanned N times.

Each implementation runs in a fresh child process (its own CPU figures), started against
one mosquitto on 127.0.0.1 that this script starts. Once every actor listens, the parent
publishes ``--rate`` packets a second for ``--seconds``, each for the next sensor in
turn, and tells the child how many it sent; the child reports the CPU it spent from the
first packet until every packet became telemetry (or 10 s more passed), and, measured
for 2 s before it while every actor listened, its idle CPU: ``net`` is the CPU per packet
less that baseline. The broker's own CPU over the same window is read from /proc.
Implementations alternate over ``--repeat`` rounds; the medians and the same-run ratio
are printed, then one line ``RESULT key=value ...``.

Usage: python bench/mqtt_sources.py [--quick] [--sensors 200] [--rate 50] [--seconds 20]
       [--repeat 3] [--impl hub per-actor]

``--impl hub`` alone measures the hub at rates a connection per actor cannot follow
(``--rate 2000``); the ratio needs both.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from runtime.lowlevel import EventRecord, TelemetryRecord

TOPIC = "piphi/sources/rtl433/packets"
IMPLS = ("hub", "per-actor")
#: Seconds each child sits idle (every actor listening) to measure its baseline CPU.
IDLE_WINDOW = 2.0
MODELS = ("Acurite-Tower", "LaCrosse-TX141THBv2", "Nexus-TH", "Oregon-THGR122N")


def hint(n: int) -> dict[str, Any]:
    return {"model": MODELS[n % 4], "id": 1000 + n, "channel": "ABC"[n % 3]}


def envelope(n: int, seq: int) -> bytes:
    h = hint(n)
    return json.dumps(
        {
            "source": "rtl433",
            "received_at": "2026-11-22T10:00:00.250000+00:00",
            "model": h["model"],
            "device_hint": h,
            "packet": {
                **h,
                "battery_ok": 1,
                "temperature_C": round(15 + (seq % 100) / 10, 1),
                "humidity": 40 + seq % 20,
                "mic": "CRC",
            },
            "metadata": {"freq": 433.92, "rssi": -7.1, "snr": 21.4, "noise": -28.5},
        }
    ).encode()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu(pid: int) -> float:
    """utime + stime of another process, in seconds (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def established_to(port: int) -> int:
    count = 0
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                count += 1
    return count


class CountingSink:
    def __init__(self) -> None:
        self.telemetry_count = 0

    def telemetry(self, record: TelemetryRecord) -> None:
        self.telemetry_count += 1

    def event(self, record: EventRecord) -> None:
        pass

    def admit(self) -> bool:
        return True


# -- the child: one implementation ----------------------------------------------------------


async def read_line(stream: trio.lowlevel.FdStream, buffer: bytearray) -> str:
    while b"\n" not in buffer:
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise EOFError("the parent went away")
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line.decode().strip()


async def child(impl: str, port: int, sensors: int) -> None:
    from actors.mqtt_source import MqttSourceActor
    from actors.source_device import SourceDeviceActor
    from runtime import MqttSource
    from runtime.lowlevel import open_actor_nursery, open_sources

    sink = CountingSink()
    stdin = trio.lowlevel.FdStream(os.dup(0))
    buffer = bytearray()
    async with AsyncExitStack() as stack:
        hub = None
        if impl == "hub":
            source = MqttSource(f"mqtt://127.0.0.1:{port}", topics=[TOPIC], name="rtl433")
            hub = await stack.enter_async_context(open_sources([source]))
        actors = await stack.enter_async_context(
            open_actor_nursery(sink, rng=random.Random(1), stall_threshold=None, sources=hub)
        )
        for n in range(sensors):
            config: dict[str, Any] = {
                "id": f"sensor-{n}",
                "device_hint": hint(n),
                "silence_seconds": 600,
            }
            if impl == "hub":
                actors.spawn(SourceDeviceActor, config)
            else:
                actors.spawn(MqttSourceActor, {**config, "port": port})

        def ready() -> bool:
            if hub is not None:
                return hub.links[0].state == "connected" and (
                    hub.figures()["claimed_hints"] == sensors
                )
            return all(getattr(s.actor, "listening", False) for s in actors)

        with trio.fail_after(60):
            while not ready():  # noqa: ASYNC110 - a bounded poll of plain attributes
                await trio.sleep(0.05)
        idle0, idle_wall0 = cpu_seconds(), time.monotonic()
        await trio.sleep(IDLE_WINDOW)
        idle_rate = (cpu_seconds() - idle0) / (time.monotonic() - idle_wall0)
        print("READY", flush=True)
        assert await read_line(stdin, buffer) == "GO"
        cpu0, wall0 = cpu_seconds(), time.monotonic()
        sent = int((await read_line(stdin, buffer)).split()[1])
        with trio.move_on_after(10):
            while sink.telemetry_count < sent:  # noqa: ASYNC110
                await trio.sleep(0.01)
        cpu1, wall1 = cpu_seconds(), time.monotonic()
        print(
            json.dumps(
                {
                    "cpu_s": cpu1 - cpu0,
                    "wall_s": wall1 - wall0,
                    "idle_rate": idle_rate,
                    "telemetry": sink.telemetry_count,
                }
            ),
            flush=True,
        )
    await stdin.aclose()


# -- the parent: broker, publisher, table ---------------------------------------------------


def mosquitto_binary() -> str:
    for found in (shutil.which("mosquitto"), "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if found and os.access(found, os.X_OK):
            return found
    sys.exit("mosquitto is not installed: apt-get install -y mosquitto (or make test)")


def start_broker(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    conf = directory / "mosquitto.conf"
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false"]
    if os.geteuid() == 0:
        lines.append("user root")
    conf.write_text("\n".join([*lines, ""]))
    broker = subprocess.Popen(
        [mosquitto_binary(), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return broker, port
        except OSError:
            time.sleep(0.02)
    broker.kill()
    sys.exit("mosquitto did not start")


async def one_run(
    impl: str, broker_pid: int, port: int, args: argparse.Namespace
) -> dict[str, float]:
    from moat.lib.mqtt.async_client import AsyncMQTTClient

    cmd = [sys.executable, __file__, "--child", impl, "--port", str(port)]
    cmd += ["--sensors", str(args.sensors)]
    process = await trio.lowlevel.open_process(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert process.stdin is not None and process.stdout is not None
    buffer = bytearray()

    async def line() -> str:
        while b"\n" not in buffer:
            chunk = await process.stdout.receive_some(4096)  # type: ignore[union-attr]
            if not chunk:
                raise RuntimeError(f"the {impl} child ended early")
            buffer.extend(chunk)
        text, _, rest = bytes(buffer).partition(b"\n")
        buffer[:] = rest
        return text.decode().strip()

    try:
        with trio.fail_after(90):
            assert await line() == "READY"
        connections = established_to(port)
        packets = int(args.rate * args.seconds)
        payloads = [envelope(n % args.sensors, n) for n in range(packets)]
        async with AsyncMQTTClient("127.0.0.1", port) as client:
            broker0 = process_cpu(broker_pid)
            await process.stdin.send_all(b"GO\n")
            start = trio.current_time()
            for n, payload in enumerate(payloads):
                await trio.sleep_until(start + n / args.rate)
                await client.publish(TOPIC, payload)
            await process.stdin.send_all(f"DONE {packets}\n".encode())
            with trio.fail_after(30):
                result = json.loads(await line())
            broker1 = process_cpu(broker_pid)
        await process.stdin.aclose()
        with trio.fail_after(30):
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
    return {
        "connections": connections,  # counted before the publisher connects
        "packets": packets,
        "delivered": result["telemetry"],
        "cpu_us_per_packet": result["cpu_s"] / packets * 1e6,
        "net_us_per_packet": (result["cpu_s"] - result["idle_rate"] * result["wall_s"])
        / packets
        * 1e6,
        "idle_cpu_pct": result["idle_rate"] * 100,
        "broker_us_per_packet": (broker1 - broker0) / packets * 1e6,
        "cpu_pct": result["cpu_s"] / result["wall_s"] * 100,
    }


async def parent(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        broker, port = start_broker(Path(tmp))
        try:
            impls = tuple(args.impl)
            runs: dict[str, list[dict[str, float]]] = {impl: [] for impl in impls}
            for round_ in range(args.repeat):
                order = impls if round_ % 2 == 0 else tuple(reversed(impls))
                for impl in order:
                    run = await one_run(impl, broker.pid, port, args)
                    runs[impl].append(run)
                    print(f"# round {round_ + 1} {impl}: " + json.dumps(run), flush=True)
        finally:
            broker.terminate()
            broker.wait(timeout=5)
    medians = {
        impl: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
        for impl, rs in runs.items()
    }
    print(
        f"\nsensors={args.sensors} rate={args.rate}/s seconds={args.seconds} "
        f"repeat={args.repeat} (medians)"
    )
    print(
        f"{'impl':<10} {'conns':>6} {'packets':>8} {'delivered':>9} {'us/packet':>10} "
        f"{'net us/packet':>14} {'idle cpu %':>10} {'cpu %':>6} {'broker us/packet':>17}"
    )
    for impl, m in medians.items():
        print(
            f"{impl:<10} {m['connections']:>6.0f} {m['packets']:>8.0f} {m['delivered']:>9.0f} "
            f"{m['cpu_us_per_packet']:>10.1f} {m['net_us_per_packet']:>14.1f} "
            f"{m['idle_cpu_pct']:>10.2f} {m['cpu_pct']:>6.1f} {m['broker_us_per_packet']:>17.1f}"
        )
    if len(medians) == 1:
        ((impl, m),) = medians.items()
        name = impl.replace("-", "_")
        print(
            f"RESULT sensors={args.sensors} rate={args.rate:g} packets={m['packets']:.0f} "
            f"{name}_connections={m['connections']:.0f} "
            f"{name}_us_per_packet={m['cpu_us_per_packet']:.1f} "
            f"{name}_net_us_per_packet={m['net_us_per_packet']:.1f} "
            f"{name}_broker_us_per_packet={m['broker_us_per_packet']:.1f} "
            f"{name}_delivered={m['delivered']:.0f}"
        )
        return
    hub, per_actor = medians["hub"], medians["per-actor"]
    ratios = [
        p["cpu_us_per_packet"] / h["cpu_us_per_packet"]
        for h, p in zip(runs["hub"], runs["per-actor"], strict=True)
    ]
    ratio = statistics.median(ratios)
    print(f"# per-actor/hub CPU per packet, per round: {', '.join(f'{r:.1f}' for r in ratios)}")
    print(
        f"RESULT sensors={args.sensors} rate={args.rate:g} packets={hub['packets']:.0f} "
        f"hub_connections={hub['connections']:.0f} "
        f"per_actor_connections={per_actor['connections']:.0f} "
        f"hub_us_per_packet={hub['cpu_us_per_packet']:.1f} "
        f"per_actor_us_per_packet={per_actor['cpu_us_per_packet']:.1f} "
        f"cpu_ratio={ratio:.1f} "
        f"hub_net_us_per_packet={hub['net_us_per_packet']:.1f} "
        f"per_actor_net_us_per_packet={per_actor['net_us_per_packet']:.1f} "
        f"hub_broker_us_per_packet={hub['broker_us_per_packet']:.1f} "
        f"per_actor_broker_us_per_packet={per_actor['broker_us_per_packet']:.1f} "
        f"hub_delivered={hub['delivered']:.0f} per_actor_delivered={per_actor['delivered']:.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="one round of 5 s (<1 min)")
    parser.add_argument("--sensors", type=int, default=200)
    parser.add_argument("--rate", type=float, default=50.0, help="packets a second, in all")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--impl", nargs="+", choices=IMPLS, default=list(IMPLS), help="default: both (the ratio)"
    )
    parser.add_argument("--child", choices=IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        trio.run(child, args.child, args.port, args.sensors)
        return
    if args.quick:
        args.seconds, args.repeat = 5.0, 1
    trio.run(parent, args)


if __name__ == "__main__":
    main()
