"""The contract's own rules: encoders match their models, both spellings in, snake out."""

from __future__ import annotations

import enum
import json
import math
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
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
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="not JSON compliant"):
            encode_telemetry("a", "d", "c", None, None, {"t": bad}, {}, iso(0.0))
    with pytest.raises(ValueError, match="shorter"):  # the general encoder is the model's
        encode_event("e", "t", iso(0.0))  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "moment",
    [
        *(0.0, 1.0, -0.5, -1e-7, 0.9999995, 1.9999999999, 2.0000005, 1_765_000_000.0000005),
        *(1e-6, 5e-7, 2.5e-6, -0.0, 7),  # ties go to even, as datetime rounds them
    ],
)
def test_a_stamp_rounds_and_carries_as_datetime_does(moment: float) -> None:
    assert iso(moment) == datetime.fromtimestamp(moment, UTC).isoformat()


@pytest.mark.parametrize(
    ("moment", "error"),
    [
        (math.nan, ValueError),
        (math.inf, OverflowError),
        (-math.inf, OverflowError),
        (1e20, OverflowError),
        (1e12, ValueError),
        (Fraction(1, 3), TypeError),
    ],
)
def test_a_stamp_refuses_what_datetime_refuses(moment: float, error: type[Exception]) -> None:
    with pytest.raises(error):
        datetime.fromtimestamp(moment, UTC)
    with pytest.raises(error):
        iso(moment)


def test_telemetry_of_other_shapes_is_written_as_json_writes_it() -> None:
    class Name(str):
        pass

    cases: list[tuple[Any, Any]] = [
        ({Name("t"): 1.5, "s": Name("x")}, {}),  # str subclasses: the fast path
        (None, None),  # not dicts: the general encoder
        ({1: 2}, {"a": "b"}),  # a key json converts
    ]
    for metrics, units in cases:
        values = ("a", "d", "c", None, "i", metrics, units, iso(0.0))
        fields = dict(zip(TelemetryPayload.model_fields, values, strict=True))
        expected = json.dumps(fields, separators=(",", ":"), allow_nan=False, default=str)
        assert encode_telemetry(*values) == expected.encode()


class Level(enum.IntEnum):
    HIGH = 3


_metric_values = st.one_of(
    st.text(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([Level.HIGH]),  # a subclass: the general encoder writes it
)


@given(
    ids=st.lists(st.text(), min_size=3, max_size=3),
    container=st.none() | st.text(),
    integration=st.none() | st.text(),
    metrics=st.dictionaries(st.text(), _metric_values, max_size=6),
    units=st.dictionaries(st.text(), st.text(), max_size=3),
    moment=st.floats(min_value=-1e10, max_value=1e11),
)
@settings(max_examples=400)
def test_telemetry_is_written_byte_for_byte_as_json_writes_its_model(
    ids: list[str],
    container: str | None,
    integration: str | None,
    metrics: dict[str, Any],
    units: dict[str, str],
    moment: float,
) -> None:
    """The hand-written encoder and the stamp are fast paths: they must give exactly the
    bytes of the general ones (json over the model's fields, datetime's isoformat)."""
    stamp = iso(moment)
    assert stamp == datetime.fromtimestamp(moment, UTC).isoformat()
    values = (*ids, container, integration, metrics, units, stamp)
    fields = dict(zip(TelemetryPayload.model_fields, values, strict=True))
    expected = json.dumps(fields, separators=(",", ":"), allow_nan=False).encode()
    assert encode_telemetry(*values) == expected


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
