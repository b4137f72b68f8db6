"""The shared source hub against a real mosquitto on 127.0.0.1, in real time: 200
simulated rtl_433 sensors over one broker connection, each packet to the right actor,
and a broker restart survived. Every wait is bounded; backoffs are fractions of a second.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from moat.lib.mqtt.async_client import AsyncMQTTClient

from actors.source_device import SourceDeviceActor
from runtime import ActorState, MqttSource, Reading
from runtime.lowlevel import ActorNursery, SourceHub, open_actor_nursery, open_sources
from runtime.testing import RecordingSink

from ..helpers import wait_until
from .broker import Broker

pytestmark = pytest.mark.usefixtures("one_connect_attempt")

TOPIC = "piphi/sources/rtl433/packets"
SENSORS = 200
WAIT = 10.0  # seconds: the bound on every wait for the broker, the hub or the actors


def hint(n: int) -> dict[str, Any]:
    models = ("Acurite-Tower", "LaCrosse-TX141THBv2", "Nexus-TH", "Oregon-THGR122N")
    return {"model": models[n % 4], "id": 1000 + n, "channel": "ABC"[n % 3]}


def envelope(n: int, round_: int) -> str:
    return json.dumps(
        {
            "source": "rtl433",
            "received_at": "2026-11-22T10:00:00.250000+00:00",
            "model": hint(n)["model"],
            "device_hint": hint(n),
            "packet": {**hint(n), "temperature_C": n + round_ / 100, "humidity": 40, "mic": "CRC"},
            "metadata": {"rssi": -7.2, "freq": 433.92},
        }
    )


def established_to(port: int) -> int:
    """TCP connections this process has open to ``port`` (ESTABLISHED, client side), from
    /proc/net/tcp: what the broker sees from us, whoever in the process counts. Sockets of
    other processes are left out: the suite runs in parallel, and a server there whose
    client happened to get ``port`` as its ephemeral port (free while the broker was
    down) shows the same remote port."""
    own = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = fd.readlink().name
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            own.add(target[len("socket:[") : -1])
    count = 0
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port == port and fields[3] == "01" and fields[9] in own:
                count += 1
    return count


@asynccontextmanager
async def fleet(
    broker: Broker, sink: RecordingSink
) -> AsyncIterator[tuple[SourceHub, ActorNursery]]:
    source = MqttSource(f"mqtt://{broker.host}:{broker.port}", name="rtl433", stop_grace=0.5)
    async with (
        open_sources([source], rng=random.Random(5), initial_delay=0.05, max_delay=0.3) as hub,
        open_actor_nursery(sink, rng=random.Random(5), sources=hub) as actors,
    ):
        for n in range(SENSORS):
            actors.spawn(
                SourceDeviceActor,
                {"id": f"sensor-{n}", "device_hint": hint(n), "silence_seconds": 60},
            )
        await wait_until(
            lambda: hub.links[0].state == "connected" and hub.figures()["claimed_hints"] == SENSORS,
            timeout=WAIT,
        )
        yield hub, actors


async def publish_round(broker: Broker, round_: int) -> None:
    async with AsyncMQTTClient(broker.host, broker.port) as client:
        for n in range(SENSORS):
            await client.publish(TOPIC, envelope(n, round_))
        await client.publish(TOPIC, json.dumps({**json.loads(envelope(0, 0)), "device_hint": {}}))


def temperatures(sink: RecordingSink, n: int) -> list[float]:
    return [
        reading.value
        for record in sink.telemetry_for(f"sensor-{n}")
        for reading in record.readings
        if reading.metric == "temperature_c" and isinstance(reading.value, float | int)
    ]


async def test_two_hundred_sensors_share_one_connection_and_each_gets_its_own_packets(
    broker: Broker, sink: RecordingSink
) -> None:
    async with fleet(broker, sink) as (hub, actors):
        assert established_to(broker.port) == 1  # the hub's, for all 200 actors
        await publish_round(broker, 1)
        await wait_until(lambda: sink.telemetry_count >= SENSORS, timeout=WAIT)
        await trio.sleep(0.1)  # nothing else is on its way

        for n in range(SENSORS):
            assert temperatures(sink, n) == [n + 0.01], n
        first = sink.telemetry_for("sensor-7")[0]
        assert first.readings == (
            Reading("temperature_c", 7.01, "C"),
            Reading("humidity", 40, "%"),
        )
        (link,) = hub.figures()["sources"]
        assert (link["packets"], link["routed"], link["malformed"], link["connects"]) == (
            SENSORS + 1,
            SENSORS,
            1,
            1,
        )
        assert hub.figures()["dropped"] == 0 and link["unclaimed"] == 0
        assert all(s.state is ActorState.RUNNING for s in actors)
        assert sink.event_count == 0


async def test_the_hub_survives_a_broker_restart_and_delivery_resumes(
    broker: Broker, sink: RecordingSink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="runtime.sources")
    async with fleet(broker, sink) as (hub, actors):
        await publish_round(broker, 1)
        await wait_until(lambda: sink.telemetry_count >= SENSORS, timeout=WAIT)

        await broker.stop(kill=True)
        await wait_until(lambda: hub.concerns(), timeout=WAIT)
        (concern,) = hub.concerns()
        assert concern.code == "source_down" and "'rtl433'" in concern.message
        await wait_until(lambda: hub.links[0].attempts >= 3, timeout=WAIT)  # refused, retried
        await broker.start()  # same port

        await wait_until(lambda: hub.links[0].connects == 2, timeout=WAIT)
        assert hub.concerns() == [] and established_to(broker.port) == 1
        await publish_round(broker, 2)
        await wait_until(lambda: sink.telemetry_count >= 2 * SENSORS, timeout=WAIT)

        for n in range(SENSORS):
            assert temperatures(sink, n) == [n + 0.01, n + 0.02], n
        assert all(s.state is ActorState.RUNNING for s in actors)
        assert sink.event_count == 0  # 60 s of silence never passed: no device went away
        downs = [r for r in caplog.records if "is down" in r.getMessage()]
        assert [r.levelno for r in downs][:1] == [logging.WARNING]  # once per outage
        assert all(r.levelno == logging.DEBUG for r in downs[1:])

        started = trio.current_time()
    # Leaving closed 200 actors and the session, politely and at once.
    assert trio.current_time() - started < 1.0
    assert "Unsubscribe timed out" not in caplog.text


async def test_a_refused_login_is_a_source_down_with_the_brokers_reason(tmp_path: Path) -> None:
    from .broker import running_broker

    async with running_broker(tmp_path, allow_anonymous=False) as strict:
        source = MqttSource(f"mqtt://piphi:hunter2@{strict.host}:{strict.port}")
        async with open_sources([source], initial_delay=0.05, max_delay=0.1) as hub:
            await wait_until(lambda: hub.concerns(), timeout=WAIT)
            (concern,) = hub.concerns()
    assert concern.message.endswith("is down: refused: not authorized")
    assert "hunter2" not in concern.message
