"""The shared source hub (runtime/_sources.py) with an in-memory source, on the virtual
clock: routing, unclaimed hints, bounded inboxes, reconnects with backoff, and what the
routes show (/discover, /diagnostics, /health, /metrics). The real-broker tests are in
tests/actors/test_mqtt_hub.py."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

from actors.source_device import SourceDeviceActor
from runtime import ActorState, Integration, MqttSource, Reading, SourcePacket
from runtime._errors import SourceNotDeclared
from runtime._settings import Settings
from runtime._sources import (
    RECONNECT_INITIAL_DELAY,
    RECONNECT_MAX_DELAY,
    Payload,
    SourceHint,
)
from runtime.lowlevel import (
    ActorNursery,
    Source,
    SourceHub,
    SourceInbox,
    open_actor_nursery,
    open_sources,
)
from runtime.testing import FakeCore, RecordingSink
from tests.helpers import wait_until
from tests.served import Served, env_for, serve


class FakeSource(Source):
    """A source in memory: ``publish()`` feeds the open session; ``down`` refuses new
    sessions and ``cut()`` ends the open one, as a broker going away would."""

    kind = "fake"

    def __init__(self, name: str = "radio", password: str | None = None) -> None:
        self.name = name
        self.password = password
        self.down = False
        self.attempts: list[float] = []  # trio time of every session attempt
        self.closed = 0  # sessions left politely
        self._send: trio.MemorySendChannel[Payload] | None = None
        self.connected = trio.Event()

    def where(self) -> str:
        return f"memory://{self.name}"

    def secrets(self) -> tuple[str, ...]:
        return (self.password,) if self.password else ()

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncIterator[Payload]]:
        self.attempts.append(trio.current_time())
        await trio.lowlevel.checkpoint()
        if self.down:
            raise ConnectionRefusedError(111, "Connection refused")
        send, receive = trio.open_memory_channel[Payload](1000)
        self._send = send
        self.connected.set()
        try:
            yield receive
        finally:
            self._send = None
            self.connected = trio.Event()
            self.closed += 1

    @property
    def is_up(self) -> bool:
        return self._send is not None

    def publish(self, *payloads: Payload) -> None:
        assert self._send is not None, "no session is open"
        for payload in payloads:
            self._send.send_nowait(payload)

    def cut(self) -> None:
        assert self._send is not None
        self._send.close()


def envelope(
    model: str = "Acurite-Tower",
    id: int | str = 1234,
    channel: str | int | None = "A",
    *,
    source: str = "rtl433",
    received: str | None = "2026-11-22T10:00:00.250000+00:00",
    **fields: Any,
) -> dict[str, Any]:
    hint = {"model": model, "id": id, "channel": channel}
    return {
        "source": source,
        "received_at": received,
        "model": model,
        "device_hint": hint,
        "packet": {**hint, **fields},
        "metadata": {"rssi": -7.2, "freq": 433.92},
    }


def encoded(*args: Any, **kw: Any) -> bytes:
    return json.dumps(envelope(*args, **kw)).encode()


class Owner:
    """Stands in for an actor holding a claim."""


@asynccontextmanager
async def hub_with(source: FakeSource, **kw: Any) -> AsyncIterator[SourceHub]:
    async with open_sources([source], rng=random.Random(7), **kw) as hub:
        await wait_until(lambda: source.is_up, timeout=5)
        yield hub


# -- routing ---------------------------------------------------------------------------------


async def test_each_envelope_goes_to_the_inbox_of_the_device_it_names(
    autojump_clock: trio.abc.Clock,
) -> None:
    source = FakeSource()
    async with hub_with(source) as hub:
        porch = hub.claim(Owner(), SourceHint.of("Acurite-Tower", 1234, "A"))
        shed = hub.claim(Owner(), SourceHint.of("Acurite-Tower", "1234", "B"))
        garden = hub.claim(Owner(), SourceHint.of("LaCrosse-TX141", 77))  # any channel
        source.publish(
            encoded(temperature_C=21.4),
            encoded(channel="B", temperature_C=5.0),
            encoded("LaCrosse-TX141", 77, 3, humidity=40),
            json.dumps(envelope("LaCrosse-TX141", "77", None, humidity=41)),  # str payloads too
            envelope(temperature_C=21.5),  # an already parsed envelope
        )
        first = await porch.get()
        assert first == SourcePacket(
            source="rtl433",
            received_at=datetime(2026, 11, 22, 10, 0, 0, 250000, UTC),
            model="Acurite-Tower",
            device_hint={"model": "Acurite-Tower", "id": 1234, "channel": "A"},
            packet={"model": "Acurite-Tower", "id": 1234, "channel": "A", "temperature_C": 21.4},
            metadata={"rssi": -7.2, "freq": 433.92},
            connection="radio",
        )
        assert (await porch.get()).packet["temperature_C"] == 21.5
        assert (await shed.get()).packet["temperature_C"] == 5.0
        assert [(await garden.get()).packet["humidity"] for _ in range(2)] == [40, 41]
        assert len(porch) == len(shed) == len(garden) == 0
        (link,) = hub.figures()["sources"]
        assert (link["packets"], link["routed"], link["unclaimed"]) == (5, 5, 0)


async def test_an_unknown_hint_costs_one_dict_lookup_and_is_remembered_for_discover(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = FakeSource()

    class CountingDict(dict[Any, Any]):
        lookups = 0

        def get(self, key: Any, default: Any = None) -> Any:
            CountingDict.lookups += 1
            return super().get(key, default)

    def no_packet_built(*args: Any) -> SourcePacket:
        raise AssertionError("a SourcePacket was built for a packet nobody claims")

    async with hub_with(source) as hub:
        hub.claim(Owner(), SourceHint.of("Acurite-Tower", 1234, "A"))
        hub._routes = CountingDict(hub._routes)
        monkeypatch.setattr("runtime._sources._packet", no_packet_built)
        source.publish(*(encoded("Oregon-THGR122N", n, 1, temperature_C=n) for n in range(50)))
        await wait_until(lambda: hub.figures()["sources"][0]["packets"] == 50)
        assert CountingDict.lookups == 50  # one per packet, nothing else routed
        (link,) = hub.figures()["sources"]
        assert (link["routed"], link["unclaimed"]) == (0, 50)
        assert hub.figures()["unclaimed_hints"] == 50


async def test_malformed_payloads_are_counted_and_skipped(autojump_clock: trio.abc.Clock) -> None:
    source = FakeSource()
    async with hub_with(source) as hub:
        inbox = hub.claim(Owner(), SourceHint.of("Acurite-Tower", 1234))
        source.publish(
            b"{1234 not json",
            b"\xff\xfe",
            b"[1234]",
            json.dumps({"device_hint": "1234"}),
            json.dumps({"device_hint": {"model": "Acurite-Tower"}}),  # no id
            json.dumps({"device_hint": {"id": 1234}}),  # no model anywhere
            encoded(temperature_C=1.0),
        )
        assert (await inbox.get()).packet["temperature_C"] == 1.0
        (link,) = hub.figures()["sources"]
        assert (link["packets"], link["malformed"], link["routed"]) == (7, 6, 1)


async def test_the_unclaimed_hints_are_a_bounded_lru_and_a_claim_takes_its_own_out(
    autojump_clock: trio.abc.Clock,
) -> None:
    source = FakeSource()
    async with hub_with(source) as hub:
        hub.unclaimed_limit = 3
        for n in range(5):
            source.publish(encoded("Nexus-TH", n, 1, temperature_C=float(n)))
        source.publish(encoded("Nexus-TH", 2, 1, temperature_C=22.0))  # heard again: freshest
        await wait_until(lambda: hub.figures()["sources"][0]["packets"] == 6)
        found = hub.discovered()
        assert [d["device_hint"]["id"] for d in found] == ["2", "4", "3"]  # most recent first
        assert found[0]["packets"] == 2 and found[0]["sample"]["temperature_C"] == 22.0
        assert hub.unclaimed_evicted == 2

        hub.claim(Owner(), SourceHint.of("Nexus-TH", 4))
        assert [d["device_hint"]["id"] for d in hub.discovered()] == ["2", "3"]
        assert hub.figures()["unclaimed_hints"] == 2
        hub.claim(Owner(), SourceHint.of("Nexus-TH", 3, source="another-radio"))
        assert hub.figures()["unclaimed_hints"] == 2  # heard from rtl433: still unclaimed
        hub.claim(Owner(), SourceHint.of("Nexus-TH", 3, 1, source="rtl433"))
        assert [d["device_hint"]["id"] for d in hub.discovered()] == ["2"]


async def test_a_full_inbox_drops_its_oldest_packet_and_counts_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    source = FakeSource()
    async with hub_with(source) as hub:
        slow = hub.claim(Owner(), SourceHint.of("Acurite-Tower", 1234), capacity=3)
        other = hub.claim(Owner(), SourceHint.of("Acurite-Tower", 99))
        for n in range(5):
            source.publish(encoded(temperature_C=float(n)), encoded(id=99, temperature_C=float(n)))
        await wait_until(lambda: hub.figures()["sources"][0]["packets"] == 10)
        # The hub went on routing to the other actor while this inbox was full.
        assert len(other) == 5 and other.dropped == 0
        assert [(await slow.get()).packet["temperature_C"] for _ in range(3)] == [2.0, 3.0, 4.0]
        assert (slow.dropped, slow.delivered) == (2, 5)
        assert hub.figures()["dropped"] == 2


def test_an_inbox_wakes_its_reader_and_refuses_a_capacity_below_one() -> None:
    with pytest.raises(ValueError, match="at least one"):
        SourceInbox(SourceHint.of("M", 1), Owner(), capacity=0)

    async def main() -> None:
        inbox = SourceInbox(SourceHint.of("M", 1), Owner(), capacity=2)
        got: list[SourcePacket] = []

        async def read() -> None:
            async for packet in inbox:
                got.append(packet)
                if len(got) == 2:
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            packet = SourcePacket(None, None, "M", {}, {}, {}, "radio")
            inbox.put(packet)
            inbox.put(packet)
        assert got == [packet, packet]

    trio.run(main)


async def test_claims_go_when_their_actor_stops(autojump_clock: trio.abc.Clock) -> None:
    source = FakeSource()
    async with hub_with(source) as hub:
        owner = Owner()
        inbox = hub.claim(owner, SourceHint.of("Acurite-Tower", 1234))
        assert hub.claim(owner, SourceHint.of("Acurite-Tower", "1234")) is inbox  # the same
        source.publish(encoded(), encoded())
        await wait_until(lambda: len(inbox) == 2)
        hub.release(owner)
        source.publish(encoded())
        await wait_until(lambda: hub.figures()["sources"][0]["unclaimed"] == 1)
        assert hub.figures()["claimed_hints"] == 0
        assert [d["id"] for d in hub.discovered()] == ["acurite-tower-1234-a"]


# -- reconnecting ----------------------------------------------------------------------------


async def test_a_source_reconnects_with_capped_exponential_backoff_and_jitter(
    autojump_clock: trio.abc.Clock,
) -> None:
    source = FakeSource()
    source.down = True
    async with open_sources([source], rng=random.Random(3)) as hub:
        await wait_until(lambda: len(source.attempts) >= 9, timeout=600)
        (link,) = hub.figures()["sources"]
        assert link["state"] in ("down", "connecting")
        assert link["last_error"]["message"] == "[Errno 111] Connection refused"
        assert link["down_since"] is not None and link["connects"] == 0
        gaps = [b - a for a, b in zip(source.attempts, source.attempts[1:], strict=False)]
        caps = [min(RECONNECT_MAX_DELAY, RECONNECT_INITIAL_DELAY * 2**n) for n in range(8)]
        assert all(0 <= gap <= cap + 0.01 for gap, cap in zip(gaps, caps, strict=True)), gaps
        assert sum(gaps[5:]) > sum(gaps[:3])  # the waits grow (full jitter, seeded)

        source.down = False
        await wait_until(lambda: source.is_up, timeout=RECONNECT_MAX_DELAY + 1)
        (link,) = hub.figures()["sources"]
        assert (link["state"], link["connects"], link["down_since"]) == ("connected", 1, None)
        assert link["last_error"] is None and hub.concerns() == []


async def test_a_lost_session_reconnects_by_itself_and_delivery_resumes(
    autojump_clock: trio.abc.Clock,
) -> None:
    source = FakeSource()
    async with hub_with(source) as hub:
        inbox = hub.claim(Owner(), SourceHint.of("Acurite-Tower", 1234))
        source.publish(encoded(temperature_C=1.0))
        assert (await inbox.get()).packet["temperature_C"] == 1.0
        source.cut()
        await wait_until(lambda: not source.is_up)
        (concern,) = hub.concerns()
        assert concern.code == "source_down" and "'radio'" in concern.message
        assert concern.message.endswith("is down: the session ended")
        await wait_until(lambda: source.is_up, timeout=RECONNECT_INITIAL_DELAY + 1)
        source.publish(encoded(temperature_C=2.0))
        assert (await inbox.get()).packet["temperature_C"] == 2.0
        assert hub.figures()["sources"][0]["connects"] == 2 and hub.concerns() == []


async def test_a_silent_session_is_reopened_at_once_without_an_outage(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    source = FakeSource()
    source.idle_timeout = 60
    async with hub_with(source) as hub:
        inbox = hub.claim(Owner(), SourceHint.of("Acurite-Tower", 1234))
        await trio.sleep(45)
        source.publish(encoded(temperature_C=1.0))  # heard: the idle clock starts again
        await trio.sleep(45)
        assert hub.figures()["sources"][0]["connects"] == 1
        await trio.sleep(20)  # 65 s since the last payload: reopened
        (link,) = hub.figures()["sources"]
        assert (link["connects"], link["state"], link["down_since"]) == (2, "connected", None)
        assert source.attempts[1] - source.attempts[0] == pytest.approx(105, abs=0.1)
        assert hub.concerns() == [] and "is down" not in caplog.text
        source.publish(encoded(temperature_C=2.0))
        assert [(await inbox.get()).packet["temperature_C"] for _ in range(2)] == [1.0, 2.0]


async def test_closing_the_hub_leaves_each_session_politely(autojump_clock: trio.abc.Clock) -> None:
    source = FakeSource()
    started = trio.current_time()
    async with hub_with(source):
        pass
    assert source.closed == 1
    assert trio.current_time() - started < 1


# -- actors fed by the hub -------------------------------------------------------------------


@asynccontextmanager
async def fed_actors(
    source: FakeSource, sink: RecordingSink
) -> AsyncIterator[tuple[SourceHub, ActorNursery]]:
    async with (
        hub_with(source) as hub,
        open_actor_nursery(sink, rng=random.Random(1), sources=hub) as actors,
    ):
        yield hub, actors


async def test_a_source_device_reports_its_packets_and_its_silence_once(
    autojump_clock: trio.abc.Clock, sink: RecordingSink
) -> None:
    source = FakeSource()
    async with fed_actors(source, sink) as (hub, actors):
        config = {
            "id": "porch",
            "device_hint": {"model": "Acurite-Tower", "id": 1234, "channel": "A"},
            "silence_seconds": 30,
            "metrics": {"temperature_C": {"metric": "temperature_c", "unit": "C"}, "mic": "mic"},
        }
        sup = actors.spawn(SourceDeviceActor, config)
        await wait_until(lambda: hub.figures()["claimed_hints"] == 1)
        source.publish(encoded(temperature_C=21.4, mic="CRC"), encoded(id=5, temperature_C=9.0))
        await wait_until(lambda: sink.telemetry_count == 1)
        (record,) = sink.telemetry_records
        assert record.readings == (Reading("temperature_c", 21.4, "C"), Reading("mic", "CRC"))
        assert record.observed_at == datetime(2026, 11, 22, 10, 0, 0, 250000, UTC).timestamp()

        await trio.sleep(31)
        assert sup.state is ActorState.UNAVAILABLE
        await trio.sleep(120)  # retried and silent again: the same outage
        assert sup.health().consecutive_failures >= 3
        (outage,) = sink.events("device.unavailable")
        assert outage.data["message"] == "no packet from Acurite-Tower id 1234 channel A for 30 s"

        source.publish(encoded(temperature_C=22.0))  # heard during the backoff: kept
        await wait_until(lambda: sink.events("device.available"), timeout=10)
        assert sink.event_types("porch") == ["device.unavailable", "device.available"]
        health = sup.health()  # a fresh read: mypy keeps the narrowing of sup.state above
        assert health.state is ActorState.RUNNING and health.restarts_total == 0
        assert sink.telemetry_records[-1].readings == (Reading("temperature_c", 22.0, "C"),)

        await sup.stop()
        assert hub.figures()["claimed_hints"] == 0  # the claim went with the actor


async def test_silence_while_the_source_is_down_names_the_source(
    autojump_clock: trio.abc.Clock, sink: RecordingSink
) -> None:
    source = FakeSource()
    async with fed_actors(source, sink) as (_, actors):
        hint = {"model": "Acurite-Tower", "id": 1234}
        actors.spawn(SourceDeviceActor, {"id": "porch", "device_hint": hint, "silence_seconds": 5})
        source.down = True
        source.cut()
        await wait_until(lambda: sink.events("device.unavailable"))
        (outage,) = sink.events("device.unavailable")
        assert outage.data["message"].startswith(
            "no packet from Acurite-Tower id 1234 for 5 s (source 'radio' (memory://radio) is down"
        )


async def test_a_claim_without_a_declared_source_says_how_to_declare_one(
    autojump_clock: trio.abc.Clock, sink: RecordingSink
) -> None:
    async with open_actor_nursery(sink, rng=random.Random(1)) as actors:
        hint = {"model": "Acurite-Tower", "id": 1234}
        sup = actors.spawn(SourceDeviceActor, {"id": "porch", "device_hint": hint})
        await wait_until(lambda: sup.health().last_error is not None)
        error = sup.health().last_error
        assert error is not None and error.code == SourceNotDeclared.code
        assert "sources=[MqttSource(" in error.hint


# -- the routes ------------------------------------------------------------------------------


async def found_by_integration(inputs: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"id": "from-discover", "host": inputs.get("host")}]


@asynccontextmanager
async def served_with(
    source: FakeSource, core: FakeCore, tmp_path: Path, **env: str
) -> AsyncIterator[Served]:
    integration = Integration(
        id="radio",
        name="Radio",
        version="1.0.0",
        actor=SourceDeviceActor,
        sources=[source],
        discover=found_by_integration,
    )
    async with serve(core, env_for(tmp_path, core, **env), integration) as served:
        await wait_until(lambda: source.is_up, timeout=5)
        yield served


async def test_discover_offers_the_devices_heard_that_no_config_claims(
    autojump_clock: trio.abc.Clock, core: FakeCore, tmp_path: Path
) -> None:
    source = FakeSource()
    async with served_with(source, core, tmp_path) as served:
        hint = {"model": "Acurite-Tower", "id": 1234, "channel": "A"}
        status, _ = await served.post("/config", {"id": "porch", "device_hint": hint})
        assert status == 200
        await wait_until(lambda: served.runtime.sources.figures()["claimed_hints"] == 1)
        source.publish(
            encoded(temperature_C=20.0),  # claimed: not offered
            encoded("Nexus-TH", 17, 2, temperature_C=18.5, battery_ok=1),
            encoded("Nexus-TH", 17, 2, temperature_C=18.6, battery_ok=1),
        )
        await wait_until(lambda: served.runtime.sources.figures()["sources"][0]["packets"] == 3)
        status, body = await served.post("/discover", {"inputs": {"host": "10.0.0.9"}})

    assert status == 200
    own, heard = body["devices"]
    assert own == {"id": "from-discover", "host": "10.0.0.9"}  # the integration's come first
    assert heard["id"] == "nexus-th-17-2"
    assert heard["name"] == "Nexus-TH 17 channel 2"
    assert heard["device_hint"] == {"model": "Nexus-TH", "id": "17", "channel": "2"}
    assert heard["discovered_by"] == "source" and heard["source"] == "rtl433"
    assert heard["connection"] == "radio" and heard["packets"] == 2
    assert heard["sample"]["temperature_C"] == 18.6
    assert heard["config"] == {
        "id": "nexus-th-17-2",
        "device_hint": heard["device_hint"],
        "source": "rtl433",
    }
    assert datetime.fromisoformat(heard["last_seen"]).tzinfo is not None


async def concern_codes(served: Served) -> list[str]:
    return [c["code"] for c in (await served.get("/health"))[1]["runtime"]["concerns"]]


async def test_diagnostics_metrics_and_health_show_each_source(
    autojump_clock: trio.abc.Clock, core: FakeCore, tmp_path: Path
) -> None:
    source = FakeSource(password="s3cret-broker-pw")
    async with served_with(source, core, tmp_path) as served:
        hint = {"model": "Acurite-Tower", "id": 1234}
        await served.post("/config", {"id": "porch", "device_hint": hint})
        await wait_until(lambda: served.runtime.sources.figures()["claimed_hints"] == 1)
        source.publish(encoded(), encoded(id=5), b"junk")
        await wait_until(lambda: served.runtime.sources.figures()["sources"][0]["packets"] == 3)
        status, diagnostics = await served.get("/diagnostics")
        assert status == 200
        (link,) = diagnostics["diagnostics"]["sources"]["sources"]
        assert link["name"] == "radio" and link["kind"] == "fake" and link["state"] == "connected"
        assert (link["packets"], link["routed"], link["unclaimed"], link["malformed"]) == (
            3,
            1,
            1,
            1,
        )
        assert diagnostics["diagnostics"]["sources"]["claimed_hints"] == 1
        metrics = await (await served.client.get("/metrics")).get_data(as_text=True)
        assert 'piphi_source_up{source="radio"} 1.0' in metrics
        assert 'piphi_source_packets_total{source="radio"} 3.0' in metrics
        assert "source_down" not in await concern_codes(served)

        source.down = True
        source.cut()
        await wait_until(lambda: served.runtime.sources.concerns())
        status, health = await served.get("/health")
        assert (status, health["status"]) == (200, "degraded")
        (concern,) = [c for c in health["runtime"]["concerns"] if c["code"] == "source_down"]
        assert "source 'radio' (memory://radio) is down" in concern["message"]
        link = (await served.get("/diagnostics"))[1]["diagnostics"]["sources"]["sources"][0]
        assert link["state"] in ("down", "connecting") and link["last_error"]["code"]

        source.down = False
        await wait_until(lambda: source.is_up, timeout=RECONNECT_MAX_DELAY + 1)
        assert "source_down" not in await concern_codes(served)
        assert served.runtime.secrets.scrub("s3cret-broker-pw") != "s3cret-broker-pw"


async def test_an_integration_without_sources_shows_none(
    served: Served, autojump_clock: trio.abc.Clock
) -> None:
    _, diagnostics = await served.get("/diagnostics")
    assert "sources" not in diagnostics["diagnostics"]
    assert served.runtime.sources.discovered() == []


# -- MqttSource's settings -------------------------------------------------------------------


def test_an_mqtt_source_reads_its_url_and_keeps_the_password_out_of_sight() -> None:
    source = MqttSource("mqtt://piphi:p%40ss@broker.lan:1884", topics=["a/+/packets", "b/#"])
    assert (source.host, source.port, source.username, source.password) == (
        "broker.lan",
        1884,
        "piphi",
        "p@ss",
    )
    assert source.where() == "mqtt://broker.lan:1884 a/+/packets b/#"
    assert "p@ss" not in repr(source) and "p@ss" not in source.where()
    assert list(source.secrets()) == ["p@ss"]
    assert MqttSource("mqtts://broker.lan").port == 8883
    for bad in ("http://x", "mqtt://x:99999"):
        with pytest.raises(ValueError, match="MqttSource url"):
            MqttSource(bad)
    with pytest.raises(ValueError, match="topic"):
        MqttSource(topics=[])


def test_an_mqtt_source_without_a_url_takes_the_runtimes_setting() -> None:
    settings = Settings.from_env({"PIPHI_MQTT_URL": "mqtt://u:pw@10.0.0.2:1999"})
    assert "pw" not in repr(settings)
    bound = MqttSource(name="radio").bind(settings)
    assert isinstance(bound, MqttSource)
    assert (bound.host, bound.port, bound.password, bound.name) == ("10.0.0.2", 1999, "pw", "radio")
    default = MqttSource().bind(Settings())
    assert isinstance(default, MqttSource) and (default.host, default.port) == ("127.0.0.1", 1883)
    explicit = MqttSource("mqtt://10.0.0.3")
    assert explicit.bind(settings) is explicit
    with pytest.raises(ValueError, match="PIPHI_MQTT_URL") as refused:
        Settings.from_env({"PIPHI_MQTT_URL": "http://u:secretpw@x/path"})
    assert "secretpw" not in str(refused.value)


def test_sources_need_distinct_names() -> None:
    with pytest.raises(ValueError, match="radio is repeated"):
        SourceHub([FakeSource("radio"), FakeSource("radio")])
