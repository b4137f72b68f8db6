"""The PiPhi wire contract, in one home: every body the runtime receives or answers on
its routes, everything it posts to Core, Core's paths and headers, the snapshot, the
manifest and the contract document, as pydantic models. ``docs/contract.md`` tells the
same in words; where the two differ, these models are right.

Other modules import from here, never the other way round: the contract depends on
nothing else in the runtime.
"""

from .core import (
    CONFIG_FETCH_PATH,
    CONTAINER_HEADER,
    DEFAULT_CORE_URL,
    EVENTS_PATH,
    IDEMPOTENCY_HEADER,
    SEVERITIES,
    TELEMETRY_PATH,
    TOKEN_HEADER,
    ConfigRow,
    EventPayload,
    MetricValue,
    Severity,
    TelemetryPayload,
    encode_event,
    encode_telemetry,
)
from .wire import WIRE_MODEL, Answer, JsonObject, UtcTime, WireModel, iso, snake_or_camel

__all__ = [
    "CONFIG_FETCH_PATH",
    "CONTAINER_HEADER",
    "DEFAULT_CORE_URL",
    "EVENTS_PATH",
    "IDEMPOTENCY_HEADER",
    "SEVERITIES",
    "TELEMETRY_PATH",
    "TOKEN_HEADER",
    "WIRE_MODEL",
    "Answer",
    "ConfigRow",
    "EventPayload",
    "JsonObject",
    "MetricValue",
    "Severity",
    "TelemetryPayload",
    "UtcTime",
    "WireModel",
    "encode_event",
    "encode_telemetry",
    "iso",
    "snake_or_camel",
]
