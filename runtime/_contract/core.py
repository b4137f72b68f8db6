"""Core's side of the contract: its endpoints, the headers both ways, what is posted to it.

The payload models are the source of truth for what reaches Core. Delivery does not
build a model per reading (about 10 us each, at thousands of readings a second): it uses
``encode_event``, a JSON encoder made from the model's field list at import, and
``encode_telemetry``, written field by field for the hot path; the tests check that every
encoded payload validates as its model, and that the telemetry encoder gives exactly the
bytes of the general one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from json.encoder import encode_basestring_ascii
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .wire import JsonObject, WireModel

__all__ = [
    "CONFIG_FETCH_PATH",
    "CONTAINER_HEADER",
    "DEFAULT_CORE_URL",
    "EVENTS_PATH",
    "IDEMPOTENCY_HEADER",
    "SEVERITIES",
    "TELEMETRY_PATH",
    "TOKEN_HEADER",
    "ConfigRow",
    "EventPayload",
    "MetricValue",
    "Severity",
    "TelemetryPayload",
    "encode_event",
    "encode_telemetry",
]

DEFAULT_CORE_URL = "http://127.0.0.1:31419"
TELEMETRY_PATH = "/api/v2/integrations/telemetry"
EVENTS_PATH = "/api/v2/events/ingest"
CONFIG_FETCH_PATH = "/api/v2/integrations/config/fetch/all/by/container/internal"

#: Both ways: Core's requests to the runtime and the runtime's to Core.
CONTAINER_HEADER = "X-Container-Id"
TOKEN_HEADER = "X-PiPhi-Integration-Token"
#: On ``/command``; wins over a body ``idempotency_key``.
IDEMPOTENCY_HEADER = "X-PiPhi-Idempotency-Key"

Severity = Literal["info", "warning", "error", "critical"]
SEVERITIES: frozenset[str] = frozenset({"info", "warning", "error", "critical"})
MetricValue = bool | int | float | str

_PAYLOAD = ConfigDict(extra="forbid", allow_inf_nan=False)


class TelemetryPayload(BaseModel):
    """``POST /api/v2/integrations/telemetry``: the readings of one poll or report."""

    model_config = _PAYLOAD

    telemetry_id: str = Field(description="Fixed when the payload is made; kept on retries.")
    device_id: str
    config_id: str
    container_id: str | None
    integration_id: str | None
    metrics: dict[str, MetricValue]
    units: dict[str, str]
    timestamp: str = Field(description="ISO-8601 UTC: when the values were observed.")


class EventPayload(BaseModel):
    """``POST /api/v2/events/ingest``: one event."""

    model_config = _PAYLOAD

    event_id: str = Field(description="A hex UUID fixed when the event is made.")
    type: str
    ts: str
    integration_id: str | None
    config_id: str
    container_id: str | None
    device_id: str
    severity: Severity
    transport: Literal["rest", "mqtt"]
    topic: str | None
    data: JsonObject
    received_at: str


class ConfigRow(WireModel):
    """One row of Core's config fetch: the start-up rehydration source."""

    id: str
    container_id: str | None = None
    integration_id: str | None = None
    generation: int | None = None
    config_data: JsonObject


_string: Callable[[str], str] = encode_basestring_ascii


def _nullable(value: str | None) -> str:
    return "null" if value is None else _string(value)


def _encoder(model: type[BaseModel]) -> Callable[..., bytes]:
    """A JSON encoder taking ``model``'s fields positionally, in declaration order."""
    fields = tuple(model.model_fields)
    dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False, default=str).encode

    def encode(*values: Any) -> bytes:
        return dumps(dict(zip(fields, values, strict=True))).encode()

    encode.__doc__ = f"Encode a {model.__name__} from ({', '.join(fields)})."
    return encode


_encode_telemetry = _encoder(TelemetryPayload)
encode_event = _encoder(EventPayload)


def _finite(value: float) -> str:
    if math.isfinite(value):
        return float.__repr__(value)
    raise ValueError(f"Out of range float values are not JSON compliant: {value!r}")


# How each exact type of a metric's value is written: what ``json`` writes for it.
_METRIC_JSON: dict[type, Callable[[Any], str]] = {
    str: _string,
    float: _finite,
    bool: lambda value: "true" if value else "false",
    int: int.__repr__,
}


def encode_telemetry(
    telemetry_id: str,
    device_id: str,
    config_id: str,
    container_id: str | None,
    integration_id: str | None,
    metrics: Mapping[str, Any],
    units: Mapping[str, str],
    timestamp: str,
) -> bytes:
    """Encode a TelemetryPayload: the bytes the model's field order and ``json`` give,
    written field by field in half the time (one is encoded per reading). Anything else
    than dicts of str, float, bool or int (a subclass, say) takes the general encoder."""
    if type(metrics) is dict and type(units) is dict:
        try:
            write = _METRIC_JSON
            values = ",".join([_string(k) + ":" + write[type(v)](v) for k, v in metrics.items()])
            names = ",".join([_string(k) + ":" + _string(v) for k, v in units.items()])
            return (
                f'{{"telemetry_id":{_string(telemetry_id)},"device_id":{_string(device_id)},'
                f'"config_id":{_string(config_id)},"container_id":{_nullable(container_id)},'
                f'"integration_id":{_nullable(integration_id)},"metrics":{{{values}}},'
                f'"units":{{{names}}},"timestamp":{_string(timestamp)}}}'
            ).encode()
        except (KeyError, TypeError):
            pass  # a value json writes its own way
    return _encode_telemetry(
        telemetry_id, device_id, config_id, container_id, integration_id,
        metrics, units, timestamp,
    )  # fmt: skip
