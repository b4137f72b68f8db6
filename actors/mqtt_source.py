"""One device fed by a PiPhi MQTT source stream, such as rtl_433 radio packets.

A source bridge publishes every packet it hears to ``piphi/sources/<source>/packets`` as
one JSON envelope (docs/contract.md; the PiPhi MQTT source topics)::

    {"source": "rtl433", "received_at": "2026-11-22T10:00:00.250+00:00",
     "model": "Acurite-Tower", "device_hint": {"model": "Acurite-Tower", "id": 1234,
     "channel": "A"}, "packet": {"temperature_C": 21.4, "humidity": 48, ...},
     "metadata": {...}}

``MqttSourceActor`` is a push actor for one such device. It subscribes to the stream,
keeps the packets whose ``device_hint`` is its device, and reports the packet fields named
in its ``metrics`` map as one telemetry payload per packet, observed at the envelope's
``received_at``. Other devices' packets are dropped before they are parsed when they
cannot mention this device's id, and after a dict lookup otherwise; payloads that are not
JSON are logged at debug level and skipped.

Trouble is ``DeviceUnavailable``, so the supervisor reports one outage and retries with
backoff: the broker refusing or losing the connection, or no packet from this device for
``silence_seconds``. The next packet that arrives brings ``device.available``.

Each actor holds its own connection and subscription, so N devices are N connections
and every packet is received and scanned N times. **For more than a handful of devices,
declare the stream once as a shared source instead** (``Integration(sources=
[MqttSource(...)])`` with ``actors.source_device.SourceDeviceActor``): one connection,
each packet parsed once and routed by its ``device_hint``, reconnects of its own, and
unclaimed devices offered by ``/discover`` (README, Shared sources; CPU per packet in
docs/benchmarks.md). This actor stays for a device on a broker of its own.

The client is moat-lib-mqtt on AnyIO (docs/design.md, MQTT). It does not reconnect by
itself; the supervisor's retry is the reconnect.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import AsyncIterable
from typing import ClassVar

import attrs
import trio

try:
    import moat.lib.mqtt  # noqa: F401 - the optional dependency, checked first
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
    raise ModuleNotFoundError(
        "actors.mqtt_source needs moat-lib-mqtt: pip install 'piphi-runtime[mqtt]'",
        name=exc.name,
    ) from exc
from moat.lib.mqtt import (
    MQTTConnectionLost,
    MQTTConnectPacket,
    MQTTOperationFailed,
    MQTTPublishPacket,
    QoS,
    RetainHandling,
)
from pydantic import Field, SecretStr, model_validator

from runtime import DeviceActor, DeviceUnavailable, RuntimeConfig
from runtime._redact import MASK
from runtime._sources import parse_received_at as received_at
from runtime._sources import refusing_mqtt_client

from .source_device import (
    DEFAULT_METRICS,
    DeviceHint,
    MetricSpec,
    distinct_metrics,
    readings_from,
)

__all__ = [
    "DEFAULT_METRICS",
    "DeviceHint",
    "MetricSpec",
    "MqttSourceActor",
    "MqttSourceConfig",
    "readings_from",
    "received_at",
]

#: MQTT topic levels: a source name must be one level and no wildcard.
_TOPIC_LEVEL = r"[^/+#\x00]+"
#: Ids made only of these characters appear verbatim in any JSON encoding of the envelope,
#: so a payload that does not contain one cannot be for this device.
_VERBATIM_ID = re.compile(r"[A-Za-z0-9_.:-]+")


class MqttSourceConfig(RuntimeConfig):
    """One device heard on a PiPhi MQTT source stream."""

    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    source: str = Field(default="rtl433", pattern=f"^{_TOPIC_LEVEL}$")
    topic: str | None = Field(default=None, min_length=1)
    """Defaults to ``piphi/sources/<source>/packets``; the per-model stream
    ``piphi/sources/<source>/models/<model>/packets`` has the broker do the filtering."""
    device_hint: DeviceHint
    metrics: dict[str, MetricSpec] = Field(default_factory=lambda: dict(DEFAULT_METRICS))
    """Packet field -> metric. Fields a packet lacks, or holds no number, bool or string
    in, are left out of that packet's readings."""
    silence_seconds: float = Field(default=300.0, gt=0, allow_inf_nan=False)
    """After this long without a packet for this device, it is reported unavailable."""
    connect_timeout_seconds: float = Field(default=10.0, gt=0, allow_inf_nan=False)
    """Bound on connecting and subscribing (stamina's connect retries included)."""

    @model_validator(mode="after")
    def _distinct_metrics(self) -> MqttSourceConfig:
        distinct_metrics(self.metrics)
        return self

    @property
    def subscription_topic(self) -> str:
        return self.topic or f"piphi/sources/{self.source}/packets"


class _MaskConnectPassword(logging.Filter):
    """moat-lib-mqtt logs every packet it sends at debug level, and a CONNECT packet's
    repr shows the password. This masks it in that record, whatever handler it reaches."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(
            isinstance(arg, MQTTConnectPacket) and arg.password for arg in args
        ):
            record.args = tuple(
                attrs.evolve(arg, password=MASK)
                if isinstance(arg, MQTTConnectPacket) and arg.password
                else arg
                for arg in args
            )
        return True


_moat_log = logging.getLogger("moat.lib.mqtt")
if not any(isinstance(f, _MaskConnectPassword) for f in _moat_log.filters):
    _moat_log.addFilter(_MaskConnectPassword())


class MqttSourceActor(DeviceActor[MqttSourceConfig]):
    """A push actor for one device on a PiPhi MQTT source stream; see the module doc."""

    #: How long a stop may spend unsubscribing and disconnecting before it is forced.
    stop_grace: ClassVar[float] = 1.0

    #: True while subscribed: set once the broker has acknowledged the subscription.
    listening: bool = False

    async def run(self) -> None:
        # Stopping means cancelling run(). Cancelled at once, the client spends 2 s
        # waiting for an UNSUBACK that its cancelled reader can no longer deliver
        # (docs/design.md, MQTT). So the session runs shielded, and a sibling task that does see the
        # cancellation ends only the receive loop. The session then unsubscribes and
        # disconnects politely, within stop_grace.
        receiving = trio.CancelScope()
        session = trio.CancelScope(shield=True)
        outcome: Exception | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._end_session_on_stop, receiving, session)
            with session:
                try:
                    await self._session(receiving)
                except Exception as exc:  # re-raised below, outside the nursery's group
                    outcome = exc
            nursery.cancel_scope.cancel()
        if outcome is not None:
            raise outcome

    async def _end_session_on_stop(
        self, receiving: trio.CancelScope, session: trio.CancelScope
    ) -> None:
        try:
            await trio.sleep_forever()
        finally:
            receiving.cancel()
            if self.listening:
                session.deadline = min(session.deadline, trio.current_time() + self.stop_grace)
            else:  # still connecting: nothing to leave politely
                session.cancel()

    async def _session(self, receiving: trio.CancelScope) -> None:
        """Connect, subscribe and report packets until stopped; DeviceUnavailable on trouble."""
        config = self.config
        where = f"MQTT broker {config.host}:{config.port}"
        topic = config.subscription_topic
        password = config.password.get_secret_value() if config.password else None
        silent = ended = False
        try:
            limit = config.connect_timeout_seconds
            with trio.move_on_after(limit) as connecting:
                async with (
                    refusing_mqtt_client()(
                        config.host,
                        config.port,
                        username=config.username,
                        password=password,
                        # moat-lib-mqtt 0.8.7 never pings unless the broker sets Server
                        # Keep Alive, so any keep-alive here gets a quiet subscriber
                        # dropped at 1.5x it. A dead link shows up as silence instead.
                        keep_alive=0,
                    ) as client,
                    # Packets are events: a retained one would be replayed on every
                    # reconnect, reported twice and taken for a sign of life.
                    client.subscribe(
                        topic, qos=QoS.AT_MOST_ONCE, retain_handling=RetainHandling.NO_RETAINED
                    ) as packets,
                ):
                    connecting.deadline = math.inf
                    self.listening = True
                    self.log.info("listening on %s at %s", topic, where)
                    with receiving:
                        silent = await self._receive(packets)
                        ended = not silent
        except* (MQTTConnectionLost, MQTTOperationFailed, OSError) as group:
            # One clause: a refusal is often followed by the connection closing, and two
            # clauses raising would turn this outage into a group of two.
            refused = group.subgroup(MQTTOperationFailed)
            if refused is not None:
                raise DeviceUnavailable(
                    f"{where} refused: {_first_message(refused, 'no reason given')}",
                    hint="Check the username, password and the broker's ACL for "
                    f"{topic!r}; the actor keeps retrying with backoff.",
                ) from group
            raise DeviceUnavailable(
                f"{where}: {_first_message(group, 'connection lost')}",
                hint=f"Check that the broker runs and is reachable at {config.host}:"
                f"{config.port}; the actor reconnects by itself.",
            ) from group
        finally:
            self.listening = False
        if connecting.cancelled_caught:
            raise DeviceUnavailable(
                f"{where} did not accept a connection and subscription within {limit:g} s",
                hint=f"Check that the broker runs at {config.host}:{config.port}.",
            )
        if ended:
            raise DeviceUnavailable(f"{where} ended the subscription to {topic}")
        if silent:
            raise DeviceUnavailable(
                f"no packet from {config.device_hint.describe()} on {topic} "
                f"for {config.silence_seconds:g} s",
                hint="Check the device's battery and range, and that the source bridge "
                "publishes to this topic.",
            )

    async def _receive(self, packets: AsyncIterable[MQTTPublishPacket]) -> bool:
        """Report this device's packets; True once ``silence_seconds`` pass without one."""
        config = self.config
        hint, metrics, silence = config.device_hint, config.metrics, config.silence_seconds
        text_needle = hint.id if _VERBATIM_ID.fullmatch(hint.id) else None
        byte_needle = text_needle.encode() if text_needle is not None else None
        with trio.move_on_after(silence) as quiet:
            async for message in packets:
                payload = message.payload
                if isinstance(payload, memoryview):
                    payload = payload.tobytes()
                if isinstance(payload, str):
                    if text_needle is not None and text_needle not in payload:
                        continue
                elif byte_needle is not None and byte_needle not in payload:
                    continue
                try:
                    envelope = json.loads(payload)
                except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
                    self.log.debug("skipped a payload on %s that is not JSON", message.topic)
                    continue
                if not isinstance(envelope, dict):
                    continue
                seen = envelope.get("device_hint")
                if not isinstance(seen, dict) or not hint.matches(seen):
                    continue
                packet = envelope.get("packet")
                self.report(
                    readings_from(packet if isinstance(packet, dict) else {}, metrics),
                    timestamp=received_at(envelope.get("received_at")),
                )
                quiet.deadline = trio.current_time() + silence
            return False
        return True


def _first_message(group: BaseExceptionGroup[Exception], default: str) -> str:
    first = group.exceptions[0]
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    if isinstance(first, MQTTOperationFailed) and first.reason_code is not None:
        return first.reason_code.name.lower().replace("_", " ")
    return str(first) or default
