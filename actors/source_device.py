"""One device heard on the runtime's shared sources, such as an rtl_433 radio sensor.

The integration declares the source once (``Integration(sources=[MqttSource(...)])``);
the runtime holds one connection for every device and routes each envelope by its
``device_hint`` (``runtime/_sources.py``). ``SourceDeviceActor`` is a push actor for one
such device: it claims its ``device_hint`` and reports the packet fields named in its
``metrics`` map as one telemetry payload per packet, observed at the envelope's
``received_at``.

No packet for ``silence_seconds`` is ``DeviceUnavailable``: the supervisor reports one
outage (however long it lasts) and retries; the claim outlives the retry, so the next
packet, even one heard during the backoff, brings ``device.available``. The backoff is
short (``restart_policy``): nothing is reconnected on a retry, it only bounds how late
that packet is reported. Whether the source itself is connected is the hub's business
(``/health`` says ``source_down``); a device's silence names it when it is down.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import trio
from pydantic import BaseModel, ConfigDict, Field, model_validator

from runtime import DeviceActor, DeviceUnavailable, Reading, RestartPolicy, RuntimeConfig
from runtime._contract import WIRE_MODEL
from runtime._sources import hint_text

__all__ = [
    "DEFAULT_METRICS",
    "DeviceHint",
    "MetricSpec",
    "SourceDeviceActor",
    "SourceDeviceConfig",
    "readings_from",
]

#: MQTT topic levels and envelope source names: one level, no wildcard.
SOURCE_NAME = r"^[^/+#\x00]+$"


class DeviceHint(BaseModel):
    """Which device's packets are this actor's, matched against the envelope's
    ``device_hint``. Ids and channels are compared as text (rtl_433 sends ``1234`` and
    ``"A"`` alike); no ``channel`` matches every channel."""

    model_config = ConfigDict(**WIRE_MODEL, frozen=True)

    model: str = Field(min_length=1)
    id: str = Field(min_length=1)
    channel: str | None = None

    def matches(self, seen: Mapping[str, Any]) -> bool:
        if hint_text(seen.get("id")) != self.id or hint_text(seen.get("model")) != self.model:
            return False
        return self.channel is None or hint_text(seen.get("channel")) == self.channel

    def describe(self) -> str:
        channel = f" channel {self.channel}" if self.channel is not None else ""
        return f"{self.model} id {self.id}{channel}"


class MetricSpec(BaseModel):
    """What a packet field becomes: a metric name and an optional unit.

    In a config, a plain string is shorthand for a metric without a unit.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    metric: str = Field(pattern=r"\S")
    unit: str | None = Field(default=None, pattern=r"\S")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"metric": data} if isinstance(data, str) else data


#: rtl_433's field names for the common weather-sensor readings.
DEFAULT_METRICS: Mapping[str, MetricSpec] = {
    "temperature_C": MetricSpec(metric="temperature_c", unit="C"),
    "humidity": MetricSpec(metric="humidity", unit="%"),
    "battery_ok": MetricSpec(metric="battery_ok"),
}


def readings_from(packet: Mapping[str, Any], metrics: Mapping[str, MetricSpec]) -> list[Reading]:
    """The readings ``metrics`` names in ``packet``; fields absent or of another type
    (null, lists, objects, non-finite numbers) are left out."""
    readings = []
    for field, spec in metrics.items():
        value = packet.get(field)
        if isinstance(value, bool | int | str) or (
            isinstance(value, float) and math.isfinite(value)
        ):
            readings.append(Reading(spec.metric, value, spec.unit))
    return readings


def distinct_metrics(metrics: Mapping[str, MetricSpec]) -> None:
    names = [spec.metric for spec in metrics.values()]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(f"metrics maps several packet fields to {', '.join(twice)}")


class SourceDeviceConfig(RuntimeConfig):
    """One device heard on the integration's shared sources."""

    device_hint: DeviceHint
    source: str | None = Field(default=None, pattern=SOURCE_NAME)
    """Only envelopes whose ``source`` is this (``rtl433``); None: from any source."""
    metrics: dict[str, MetricSpec] = Field(default_factory=lambda: dict(DEFAULT_METRICS))
    """Packet field -> metric. Fields a packet lacks, or holds no number, bool or string
    in, are left out of that packet's readings."""
    silence_seconds: float = Field(default=300.0, gt=0, allow_inf_nan=False)
    """After this long without a packet for this device, it is reported unavailable."""

    @model_validator(mode="after")
    def _distinct_metrics(self) -> SourceDeviceConfig:
        distinct_metrics(self.metrics)
        return self


class SourceDeviceActor(DeviceActor[SourceDeviceConfig]):
    """A push actor for one device on the shared sources; see the module doc."""

    #: Retries only wait for the next packet (nothing reconnects), so they are short.
    restart_policy: ClassVar[RestartPolicy] = RestartPolicy(initial_delay=0.5, max_delay=5.0)

    async def run(self) -> None:
        config = self.config
        hint, metrics, silence = config.device_hint, config.metrics, config.silence_seconds
        packets = self.source_packets(hint.model, hint.id, hint.channel, source=config.source)
        with trio.move_on_after(silence) as quiet:
            async for packet in packets:
                self.report(readings_from(packet.packet, metrics), timestamp=packet.received_at)
                quiet.deadline = trio.current_time() + silence
        hub = self._sources
        trouble = hub.concerns() if hub is not None else []
        raise DeviceUnavailable(
            f"no packet from {hint.describe()} for {silence:g} s"
            + (f" ({trouble[0].message})" if trouble else ""),
            hint="Check the device's battery and range, and that the source bridge "
            "publishes it; /discover lists the devices the sources hear.",
        )
