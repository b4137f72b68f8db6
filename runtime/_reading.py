"""The unit of telemetry: one named, validated measurement."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TypeAlias

import attrs

from ._errors import InvalidReading
from ._limits import ENVELOPE_ALLOWANCE, MAX_PAYLOAD_BYTES, encoded_size

__all__ = ["MAX_NAME", "Reading", "Value", "json_problem", "validate_readings"]

#: The longest metric name (and state key, event type) Core is sent.
MAX_NAME = 128
#: How deep published state and event data may nest.
MAX_NESTING = 16

#: What Core accepts as a metric value (docs/contract.md, telemetry ``metrics``).
Value: TypeAlias = bool | int | float | str

_EXACT = frozenset({bool, int, str})


@attrs.frozen(slots=True)
class Reading:
    """One measurement: ``Reading("temperature_c", 21.4, "C")``.

    Validated at construction, so a malformed value fails where the actor made it,
    with the metric's name in the message, rather than later inside delivery.
    """

    metric: str
    value: Value
    unit: str | None = None

    def __attrs_post_init__(self) -> None:
        metric, value, unit = self.metric, self.value, self.unit
        if type(metric) is not str or not metric.strip():
            raise InvalidReading(
                f"A reading's metric name must be a non-empty string, got {metric!r}"
            )
        if len(metric) > MAX_NAME or not metric.isprintable():
            raise InvalidReading(
                f"A reading's metric name must be printable and at most {MAX_NAME} characters, "
                f"got {metric[:40]!r}...",
                hint="Use short, stable names such as temperature_c.",
            )
        kind = type(value)
        # Exact type checks first (this runs for every reading of every poll); subclasses
        # such as numpy.float64 or an IntEnum take the isinstance path.
        if kind is float or (kind not in _EXACT and isinstance(value, float)):
            if not math.isfinite(value):  # type: ignore[arg-type]
                raise InvalidReading(f"Reading {metric!r} has a non-finite value {value!r}")
        elif kind not in _EXACT and not isinstance(value, (int, str)):
            raise InvalidReading(
                f"Reading {metric!r} has a value of type {kind.__name__}; "
                "use bool, int, float or str",
                hint="Convert vendor types first, e.g. float(x) for a Decimal.",
            )
        if unit is not None and (type(unit) is not str or not unit.strip()):
            raise InvalidReading(
                f"Reading {metric!r} has an invalid unit {unit!r}; use None or a non-empty string"
            )


def validate_readings(readings: Iterable[Reading], *, source: str) -> tuple[Reading, ...]:
    """Check a batch of readings (one telemetry payload) and freeze it into a tuple.

    ``source`` names where the batch came from (``poll()``, ``report()``) for the message.
    Metric names must be unique within a payload: Core receives them as a mapping, so a
    repeated name would silently drop one value. The batch must fit in one payload
    (``MAX_PAYLOAD_BYTES`` encoded).
    """
    kind = type(readings)
    if (
        kind is not list
        and kind is not tuple
        and (isinstance(readings, (str, bytes, Mapping)) or not isinstance(readings, Iterable))
    ):
        raise InvalidReading(
            f"{source} must give an iterable of Reading objects, got {kind.__name__}"
        )
    batch = tuple(readings)
    chars = 0
    for item in batch:
        if type(item) is not Reading:
            raise InvalidReading(
                f"{source} must give Reading objects, got {type(item).__name__}: {item!r}",
                hint='Return e.g. [Reading("temperature_c", 21.4, "C")].',
            )
        value = item.value
        chars += len(item.metric) + (len(value) if type(value) is str else 0)
        if item.unit is not None:
            chars += len(item.unit)
    if 12 * chars + 32 * len(batch) > _ROOM:  # could be too large: measure it exactly
        _check_size(batch, source)
    if len({item.metric for item in batch}) != len(batch):
        seen: set[str] = set()
        twice = next(r.metric for r in batch if r.metric in seen or seen.add(r.metric))  # type: ignore[func-returns-value]
        raise InvalidReading(f"{source} gave metric {twice!r} twice in one payload")
    return batch


_ROOM = MAX_PAYLOAD_BYTES - ENVELOPE_ALLOWANCE


def _check_size(batch: tuple[Reading, ...], source: str) -> None:
    metrics = {r.metric: r.value for r in batch}
    units = {r.metric: r.unit for r in batch if r.unit is not None}
    size = encoded_size(metrics) + encoded_size(units)
    if size > _ROOM:
        raise InvalidReading(
            f"{source} gave readings of {size} bytes encoded; one payload may carry at most "
            f"{_ROOM} (runtime.MAX_PAYLOAD_BYTES = {MAX_PAYLOAD_BYTES}, less room for its ids)",
            hint="Report large values some other way (a URL, a summary) or split them over "
            "several report() calls; nothing of this batch was sent.",
            details={"size": size, "limit": _ROOM},
        )


def json_problem(value: object, depth: int = 0) -> str | None:
    """Why ``value`` cannot be sent as JSON everywhere (strict parsers included), or None:
    only objects with string keys, lists, strings, booleans, finite numbers and null,
    nested at most ``MAX_NESTING`` deep."""
    kind = type(value)
    if value is None or kind is str or kind is bool or kind is int:
        return None
    if kind is float or isinstance(value, float):
        return None if math.isfinite(value) else f"a non-finite number ({value!r})"  # type: ignore[arg-type]
    if depth >= MAX_NESTING:
        return f"nesting deeper than {MAX_NESTING} levels"
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"a key that is not a string ({key!r})"
            problem = json_problem(item, depth + 1)
            if problem is not None:
                return f"{problem} under {key!r}"
        return None
    if isinstance(value, list | tuple):
        for item in value:
            problem = json_problem(item, depth + 1)
            if problem is not None:
                return problem
        return None
    if isinstance(value, int | str):
        return None
    return f"a {kind.__name__}, which JSON has no type for"
