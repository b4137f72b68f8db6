"""The contract's own rules: encoders match their models, both spellings in, snake out."""

from __future__ import annotations

import json
import math

import pytest
from pydantic import ValidationError

from runtime._contract import (
    CoreLink,
    Dashboard,
    Entity,
    EventPayload,
    TelemetryPayload,
    WireModel,
    build,
    encode_event,
    encode_telemetry,
    from_unix,
    iso,
)


def test_the_telemetry_encoder_writes_exactly_its_model() -> None:
    body = encode_telemetry(
        "a" * 32, "dev", "cfg", "ctr", "int", {"t": 21.5, "on": True}, {"t": "C"}, iso(0.0)
    )
    decoded = json.loads(body)
    assert list(decoded) == list(TelemetryPayload.model_fields)
    assert TelemetryPayload.model_validate(decoded).timestamp == "1970-01-01T00:00:00+00:00"


def test_the_event_encoder_writes_exactly_its_model() -> None:
    body = encode_event(
        "e" * 32, "device.unavailable", iso(1.0), "int", "cfg", "ctr", "dev", "warning",
        "rest", None, {"reason": "offline"}, iso(1.0),
    )  # fmt: skip
    assert list(json.loads(body)) == list(EventPayload.model_fields)
    EventPayload.model_validate_json(body)


def test_encoders_refuse_values_that_are_not_json() -> None:
    with pytest.raises(ValueError, match="not JSON compliant"):
        encode_telemetry("a", "d", "c", None, None, {"t": math.nan}, {}, iso(0.0))
    with pytest.raises(ValueError, match="shorter"):  # the encoder is the model's shape
        encode_telemetry("a", "d", "c", None, None, {}, {})


class Body(WireModel):
    api_key: str
    port_number: int = 1


def test_wire_models_read_both_spellings_and_answer_snake_case() -> None:
    assert Body.model_validate({"apiKey": "k", "portNumber": 2}).model_dump() == {
        "api_key": "k",
        "port_number": 2,
    }
    assert Body.model_validate({"api_key": "snake", "apiKey": "camel"}).api_key == "snake"
    assert "api_key" in Body.model_json_schema()["properties"]


def test_field_paths_are_snake_case_whichever_spelling_was_sent() -> None:
    with pytest.raises(ValidationError) as missing:
        Body.model_validate({"portNumber": 2})
    with pytest.raises(ValidationError) as invalid:
        Body.model_validate({"apiKey": "k", "portNumber": "x"})
    assert [e["loc"] for e in missing.value.errors()] == [("api_key",)]
    assert [e["loc"] for e in invalid.value.errors()] == [("port_number",)]


def test_build_serializes_as_model_construct_does() -> None:
    dashboard = {"allowed_widgets": ["gauge"], "default_widget": "gauge"}
    values = {
        "id": "c:d",
        "name": "Plug",
        "capabilities": ["on"],
        "config_id": "c",
        "device_id": "d",
        "device_type": "plug",
        "device_class": "sensor",
        "entity_type": "device",
        "available_commands": [],
        "dashboard": build(Dashboard, **dashboard, recommended_widgets=["gauge"]),
        "metadata": {"actor": "Plug"},
    }
    built, constructed = build(Entity, **values), Entity.model_construct(**values)
    assert built.model_dump_json() == constructed.model_dump_json()
    assert built.model_dump(mode="json") == Entity.model_validate(values).model_dump(mode="json")
    link = build(CoreLink, state="up", since=from_unix(0.0), last_error=None)
    assert link.model_dump(mode="json")["since"] == "1970-01-01T00:00:00+00:00"
