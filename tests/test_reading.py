import math
from decimal import Decimal
from enum import IntEnum

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime import InvalidReading, PiPhiError, Reading
from runtime._reading import MAX_NAME, validate_readings


class Level(IntEnum):
    HIGH = 3


@pytest.mark.parametrize("value", [True, 0, -7, 2**70, 21.5, "heating", Level.HIGH])
def test_accepts_the_values_core_accepts(value: object) -> None:
    reading = Reading("m", value, "C")  # type: ignore[arg-type]
    assert (reading.metric, reading.value, reading.unit) == ("m", value, "C")


@pytest.mark.parametrize(
    ("metric", "value", "unit", "words"),
    [
        ("", 1, None, "metric name"),
        ("   ", 1, None, "metric name"),
        (None, 1, None, "metric name"),
        ("t", math.nan, None, "non-finite"),
        ("t", math.inf, None, "non-finite"),
        ("t", None, None, "NoneType"),
        ("t", Decimal("1.5"), None, "Decimal"),
        ("t", [1], None, "list"),
        ("t", 1, "", "unit"),
        ("t", 1, 5, "unit"),
    ],
)
def test_rejects_malformed_readings_with_a_clear_error(
    metric: object, value: object, unit: object, words: str
) -> None:
    with pytest.raises(InvalidReading, match=words) as info:
        Reading(metric, value, unit)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError) and isinstance(info.value, PiPhiError)
    assert info.value.code == "invalid_reading"
    assert "hint:" in str(info.value)


@given(
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(min_size=1, max_size=MAX_NAME).filter(lambda s: s.strip() and s.isprintable()),
)
def test_every_finite_float_is_accepted(value: float, metric: str) -> None:
    assert Reading(metric, value).value == value


def test_readings_are_immutable_values() -> None:
    reading = Reading("t", 1.0)
    assert reading == Reading("t", 1.0) and hash(reading) == hash(Reading("t", 1.0))
    with pytest.raises(AttributeError):
        reading.value = 2.0  # type: ignore[misc]


def test_validate_readings_checks_a_whole_payload() -> None:
    batch = validate_readings(iter([Reading("a", 1), Reading("b", 2)]), source="poll()")
    assert batch == (Reading("a", 1), Reading("b", 2))
    assert validate_readings([], source="poll()") == ()
    with pytest.raises(InvalidReading, match="got dict"):
        validate_readings({"a": 1}, source="poll()")  # type: ignore[arg-type]
    with pytest.raises(InvalidReading, match="got int"):
        validate_readings(5, source="poll()")  # type: ignore[arg-type]
    with pytest.raises(InvalidReading, match="Reading objects, got tuple"):
        validate_readings([("a", 1)], source="poll()")  # type: ignore[list-item]
    with pytest.raises(InvalidReading, match="'a' twice"):
        validate_readings([Reading("a", 1), Reading("b", 1), Reading("a", 2)], source="report()")
