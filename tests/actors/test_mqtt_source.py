"""MqttSourceActor against a real mosquitto on 127.0.0.1, in real time (broker I/O).

Every wait is bounded; silences and backoffs are fractions of a second, so the whole
module runs in a few seconds. stamina's connect retries are switched off: the
supervisor's backoff is the retry under test.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio
from moat.lib.mqtt.async_client import AsyncMQTTClient
from pydantic import SecretStr

from actors.mqtt_source import (
    DeviceHint,
    MetricSpec,
    MqttSourceActor,
    MqttSourceConfig,
    readings_from,
    received_at,
)
from runtime import ActorState, InvalidConfig, Reading, RestartPolicy
from runtime._config import validate_config
from runtime.lowlevel import ActorNursery, Supervisor, open_actor_nursery
from runtime.testing import RecordingSink

from ..helpers import wait_until
from . import broker as broker_module
from .broker import Broker, running_broker

TOPIC = "piphi/sources/rtl433/packets"
HINT = {"model": "Acurite-Tower", "id": 1234, "channel": "A"}
FAST = RestartPolicy(initial_delay=0.05, max_delay=0.2)
WAIT = 5.0  # seconds: the bound on every wait for the broker or the actor
SECRET = "hunter2-s3cret-pw"


def envelope(
    *,
    model: str = "Acurite-Tower",
    id: int | str = 1234,
    channel: str | int | None = "A",
    received: str | None = "2026-11-22T10:00:00.250000+00:00",
    **fields: Any,
) -> dict[str, Any]:
    hint = {"model": model, "id": id, "channel": channel}
    return {
        "source": "rtl433",
        "received_at": received,
        "model": model,
        "device_hint": hint,
        "packet": {**hint, "mic": "CRC", **fields},
        "metadata": {"rssi": -7.2, "snr": 21.4, "freq": 433.92},
    }


def device_config(broker: Broker, **overrides: Any) -> dict[str, Any]:
    return {
        "id": "porch",
        "host": broker.host,
        "port": broker.port,
        "device_hint": HINT,
        **overrides,
    }


def listening(sup: Supervisor) -> bool:
    actor = sup.actor
    return isinstance(actor, MqttSourceActor) and actor.listening


async def spawn(actors: ActorNursery, config: dict[str, Any]) -> Supervisor:
    sup = actors.spawn(MqttSourceActor, config, policy=FAST)
    await wait_until(lambda: listening(sup), timeout=WAIT)
    return sup


@asynccontextmanager
async def publisher(broker: Broker) -> AsyncIterator[AsyncMQTTClient]:
    async with AsyncMQTTClient(broker.host, broker.port) as client:
        yield client


async def send(client: AsyncMQTTClient, payload: Any, topic: str = TOPIC) -> None:
    await client.publish(
        topic, payload if isinstance(payload, str | bytes) else json.dumps(payload)
    )


async def send_until(client: AsyncMQTTClient, payload: Any, done: Any) -> None:
    """Publish ``payload`` every 50 ms until ``done()``: for an actor that is reconnecting
    or backing off, where a single QoS 0 packet may arrive before it listens again."""
    with trio.fail_after(WAIT):
        while not done():
            await send(client, payload)
            await trio.sleep(0.05)


pytestmark = pytest.mark.usefixtures("one_connect_attempt")


@pytest.fixture
async def mqtt_actors(sink: RecordingSink) -> AsyncIterator[ActorNursery]:
    async with open_actor_nursery(sink, rng=random.Random(1234)) as nursery:
        yield nursery


# -- with a broker ----------------------------------------------------------------------


async def test_matching_packets_become_telemetry(
    broker: Broker, mqtt_actors: ActorNursery, sink: RecordingSink
) -> None:
    config = device_config(
        broker,
        configId="cfg-7",
        deviceId="acurite-1234",
        containerId="ctr-1",
        integrationId="rtl433-bridge",
    )
    sup = await spawn(mqtt_actors, config)
    async with publisher(broker) as client:
        await send(client, envelope(temperature_C=21.4, humidity=48, battery_ok=1))
        await send(
            client,
            envelope(received="2026-11-22T10:00:31Z", temperature_C=21.5, humidity=None),
        )
        await wait_until(lambda: sink.telemetry_count >= 2, timeout=WAIT)

    first, second = sink.telemetry_records
    assert first.readings == (
        Reading("temperature_c", 21.4, "C"),
        Reading("humidity", 48, "%"),
        Reading("battery_ok", 1),
    )
    assert second.readings == (Reading("temperature_c", 21.5, "C"),)  # null/absent: left out
    assert first.observed_at == datetime(2026, 11, 22, 10, 0, 0, 250000, UTC).timestamp()
    assert second.observed_at == datetime(2026, 11, 22, 10, 0, 31, tzinfo=UTC).timestamp()
    for record in (first, second):
        assert record.device_id == "acurite-1234"
        assert record.identity.config_id == "cfg-7"
        assert record.identity.container_id == "ctr-1"
        assert record.identity.integration_id == "rtl433-bridge"
    assert sup.state is ActorState.RUNNING
    assert sink.event_count == 0


async def test_a_custom_metric_map_and_topic(
    broker: Broker, mqtt_actors: ActorNursery, sink: RecordingSink
) -> None:
    topic = "piphi/sources/rtl433/models/Acurite-Tower/packets"
    config = device_config(
        broker,
        topic=topic,
        device_hint={"model": "Acurite-Tower", "id": "1234"},  # any channel
        metrics={"wind_avg_km_h": {"metric": "wind_kmh", "unit": "km/h"}, "mic": "check"},
    )
    await spawn(mqtt_actors, config)
    async with publisher(broker) as client:
        await send(client, envelope(channel=3, wind_avg_km_h=12.5, received=None), topic)
        await wait_until(lambda: sink.telemetry_count >= 1, timeout=WAIT)
    (record,) = sink.telemetry_records
    assert record.readings == (Reading("wind_kmh", 12.5, "km/h"), Reading("check", "CRC"))
    assert abs(record.observed_at - time.time()) < WAIT  # no received_at: stamped on arrival


async def test_other_devices_and_malformed_payloads_are_skipped(
    broker: Broker,
    mqtt_actors: ActorNursery,
    sink: RecordingSink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="actors.mqtt_source")
    sup = await spawn(mqtt_actors, device_config(broker))
    async with publisher(broker) as client:
        for payload in (
            envelope(id=99, temperature_C=1.0),  # another device
            envelope(channel="B", temperature_C=2.0),  # same id, another channel
            envelope(model="LaCrosse-TX", temperature_C=3.0),  # same id, another model
            "{1234 is not json",
            b"\xff\xfe 1234",
            "[1234]",
            json.dumps({"device_hint": "1234"}),
            envelope(temperature_C=4.0),  # ours, after all of the above (one publisher, in order)
        ):
            await send(client, payload)
        await wait_until(lambda: sink.telemetry_count >= 1, timeout=WAIT)
        await trio.sleep(0.1)  # nothing else is on its way

    assert [r.readings for r in sink.telemetry_records] == [(Reading("temperature_c", 4.0, "C"),)]
    assert sup.health().restarts_total == 0 and sup.state is ActorState.RUNNING
    skipped = [r for r in caplog.records if "not JSON" in r.getMessage()]
    assert len(skipped) == 2 and all(r.levelno == logging.DEBUG for r in skipped)


async def test_a_retained_packet_is_not_replayed_on_subscribe(
    broker: Broker, mqtt_actors: ActorNursery, sink: RecordingSink
) -> None:
    async with publisher(broker) as client:
        await client.publish(TOPIC, json.dumps(envelope(temperature_C=1.0)), retain=True)
        await spawn(mqtt_actors, device_config(broker))
        await send(client, envelope(temperature_C=2.0))
        await wait_until(lambda: sink.telemetry_count >= 1, timeout=WAIT)
        await trio.sleep(0.1)
    assert [r.readings for r in sink.telemetry_records] == [(Reading("temperature_c", 2.0, "C"),)]


async def test_silence_is_one_outage_and_the_next_packet_ends_it(
    broker: Broker, mqtt_actors: ActorNursery, sink: RecordingSink
) -> None:
    sup = await spawn(mqtt_actors, device_config(broker, silence_seconds=0.3))
    await wait_until(lambda: sink.events("device.unavailable"), timeout=WAIT)
    # Listening again and going silent again is still the same outage.
    await wait_until(lambda: sup.health().consecutive_failures >= 3, timeout=WAIT)
    assert sup.state is ActorState.UNAVAILABLE and not sup.health().available

    async with publisher(broker) as client:
        await send_until(
            client, envelope(temperature_C=19.0), lambda: sink.events("device.available")
        )

    assert sink.event_types("porch") == ["device.unavailable", "device.available"]
    (outage,) = sink.events("device.unavailable")
    assert outage.data["message"] == (
        f"no packet from Acurite-Tower id 1234 channel A on {TOPIC} for 0.3 s"
    )
    assert outage.data["phase"] == "run"
    health = sup.health()  # a fresh read: mypy keeps the narrowing of sup.state above
    assert health.state is ActorState.RUNNING and health.restarts_total == 0
    assert sink.telemetry_count >= 1


async def test_the_actor_reconnects_after_the_broker_restarts(
    broker: Broker, mqtt_actors: ActorNursery, sink: RecordingSink
) -> None:
    sup = await spawn(mqtt_actors, device_config(broker))
    async with publisher(broker) as client:
        await send(client, envelope(temperature_C=20.0))
        await wait_until(lambda: sink.telemetry_count >= 1, timeout=WAIT)

    await broker.stop(kill=True)
    await wait_until(lambda: sink.events("device.unavailable"), timeout=WAIT)
    await wait_until(lambda: sup.health().consecutive_failures >= 2, timeout=WAIT)  # refused
    await broker.start()  # same port

    async with publisher(broker) as client:
        await send_until(
            client, envelope(temperature_C=20.5), lambda: sink.events("device.available")
        )

    assert sink.event_types("porch") == ["device.unavailable", "device.available"]
    (outage,) = sink.events("device.unavailable")
    assert outage.data["message"] == f"MQTT broker 127.0.0.1:{broker.port}: connection lost"
    assert sink.telemetry_records[-1].readings == (Reading("temperature_c", 20.5, "C"),)
    assert sup.state is ActorState.RUNNING and sup.health().restarts_total == 0
    assert listening(sup)


async def test_stopping_leaves_the_broker_politely_and_at_once(
    broker: Broker, mqtt_actors: ActorNursery, caplog: pytest.LogCaptureFixture
) -> None:
    sup = await spawn(mqtt_actors, device_config(broker))
    started = trio.current_time()
    with trio.fail_after(WAIT):
        await sup.stop()
    # Cancelled outright, the client waits 2 s for an UNSUBACK it can no longer read.
    assert trio.current_time() - started < 0.5
    assert sup.state is ActorState.STOPPED
    assert "Unsubscribe timed out" not in caplog.text


async def test_the_password_never_appears(
    broker: Broker,
    mqtt_actors: ActorNursery,
    sink: RecordingSink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    config = device_config(broker, username="piphi", password=SECRET)
    sup = await spawn(mqtt_actors, config)  # the broker takes any login
    async with publisher(broker) as client:
        await send(client, envelope(temperature_C=20.0))
        await wait_until(lambda: sink.telemetry_count >= 1, timeout=WAIT)
    await broker.stop(kill=True)
    await wait_until(lambda: sink.events("device.unavailable"), timeout=WAIT)

    actor = sup.actor
    shown = [
        caplog.text,
        repr(actor.config),
        str(actor.config),
        actor.config.model_dump_json(),
        repr(vars(actor)),
        repr(sup.health().to_dict()),
        repr([(e.event_type, dict(e.data)) for e in sink.event_records]),
    ]
    assert all(SECRET not in text for text in shown)
    # moat-lib-mqtt logs the CONNECT packet at debug level; the actor masks its password.
    assert "username='piphi', password='**********'" in caplog.text
    assert isinstance(actor.config, MqttSourceConfig) and actor.config.password is not None
    assert actor.config.password.get_secret_value() == SECRET


async def test_a_refused_login_is_an_outage(
    tmp_path: Path,
    mqtt_actors: ActorNursery,
    sink: RecordingSink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_broker(tmp_path, allow_anonymous=False) as strict:
        config = device_config(strict, username="piphi", password=SECRET)
        sup = mqtt_actors.spawn(MqttSourceActor, config, policy=FAST)
        await wait_until(lambda: sup.health().consecutive_failures >= 2, timeout=WAIT)
        sup.cancel()

    (outage,) = sink.events("device.unavailable")
    assert outage.data["message"] == f"MQTT broker 127.0.0.1:{strict.port} refused: not authorized"
    assert sup.health().restarts_total == 0
    assert SECRET not in caplog.text


async def test_a_broker_that_never_answers_is_bounded_by_the_connect_timeout(
    mqtt_actors: ActorNursery, sink: RecordingSink
) -> None:
    async def hold(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()  # accepts the TCP connection, never sends a CONNACK

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, hold, listeners)
        config = {"id": "porch", "port": port, "device_hint": HINT, "connect_timeout_seconds": 0.2}
        sup = mqtt_actors.spawn(MqttSourceActor, config, policy=FAST)
        await wait_until(lambda: sink.events("device.unavailable"), timeout=WAIT)
        with trio.fail_after(WAIT):
            await sup.stop()
        nursery.cancel_scope.cancel()

    (outage,) = sink.events("device.unavailable")
    assert outage.data["message"] == (
        f"MQTT broker 127.0.0.1:{port} did not accept a connection and subscription within 0.2 s"
    )


# -- without a broker -------------------------------------------------------------------


def test_a_missing_mosquitto_fails_naming_the_make_target(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(broker_module, "CANDIDATES", ())
    with pytest.raises(pytest.fail.Exception, match=r"make test"):
        broker_module.mosquitto_binary()


def test_the_config_defaults_and_validation() -> None:
    config = validate_config(
        MqttSourceConfig, {"id": "porch", "deviceHint": HINT, "password": SECRET}
    )
    assert (config.host, config.port, config.source) == ("127.0.0.1", 1883, "rtl433")
    assert config.subscription_topic == TOPIC
    assert config.device_hint == DeviceHint(model="Acurite-Tower", id="1234", channel="A")
    assert config.metrics["temperature_C"] == MetricSpec(metric="temperature_c", unit="C")
    assert config.silence_seconds == 300
    assert isinstance(config.password, SecretStr) and SECRET not in repr(config)
    assert validate_config(
        MqttSourceConfig, {"id": "x", "device_hint": HINT, "source": "weather"}
    ).subscription_topic == ("piphi/sources/weather/packets")

    for bad in (
        {"source": "a/b"},
        {"source": "#"},
        {"silence_seconds": 0},
        {"port": 0},
        {"device_hint": {"model": "M"}},
        {"metrics": {"temperature_C": "t", "temperature_F": "t"}},
        {"metrics": {"humidity": {"metric": " "}}},
    ):
        with pytest.raises(InvalidConfig):
            validate_config(MqttSourceConfig, {"id": "x", "device_hint": HINT, **bad})
    with pytest.raises(InvalidConfig):
        validate_config(MqttSourceConfig, {"id": "x"})  # which device?


def test_device_hints_match_ids_and_channels_as_text() -> None:
    hint = DeviceHint(model="Acurite-Tower", id="1234", channel="1")
    assert hint.matches({"model": "Acurite-Tower", "id": 1234, "channel": 1})
    assert hint.matches({"model": "Acurite-Tower", "id": "1234", "channel": "1"})
    assert not hint.matches({"model": "Acurite-Tower", "id": 1234, "channel": 2})
    assert not hint.matches({"model": "Acurite-Tower", "id": 1234})
    assert not hint.matches({"model": "Acurite-Tower", "id": 12345, "channel": 1})
    assert not hint.matches({"model": "Other", "id": 1234, "channel": 1})
    assert not hint.matches({"model": "Acurite-Tower", "id": True, "channel": 1})
    any_channel = DeviceHint(model="Acurite-Tower", id="1234")
    assert any_channel.matches({"model": "Acurite-Tower", "id": 1234, "channel": "Z"})
    assert any_channel.matches({"model": "Acurite-Tower", "id": 1234})


def test_readings_keep_only_plain_values() -> None:
    metrics = {
        "a": MetricSpec(metric="a"),
        "b": MetricSpec(metric="b", unit="C"),
        "c": MetricSpec(metric="c"),
        "d": MetricSpec(metric="d"),
        "e": MetricSpec(metric="e"),
        "f": MetricSpec(metric="f"),
    }
    packet = {"a": True, "b": 1.5, "c": "ok", "d": float("nan"), "e": [1], "f": None}
    assert readings_from(packet, metrics) == [
        Reading("a", True),
        Reading("b", 1.5, "C"),
        Reading("c", "ok"),
    ]


def test_received_at_reads_iso_and_epoch_seconds() -> None:
    stamp = datetime(2026, 11, 22, 10, 0, 0, 250000, UTC)
    assert received_at("2026-11-22T10:00:00.250000+00:00") == stamp
    assert received_at("2026-11-22T10:00:00.25Z") == stamp
    assert received_at("2026-11-22T10:00:00.250000") == stamp  # no zone: UTC
    assert received_at(stamp.timestamp()) == stamp
    for unreadable in (None, "", "yesterday", True, float("inf"), 1e20, [1]):
        assert received_at(unreadable) is None
