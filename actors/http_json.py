"""A generic LAN/HTTP JSON poller: one GET per poll, metrics picked out of the answer by path.

Many LAN devices (weather stations, inverters, meters, hubs) serve their current values as
one JSON document over HTTP. Rather than one actor per vendor, ``HttpJsonActor`` is
configured declaratively: the URL to fetch, an optional auth header, which JSON paths hold
which metrics, which unit conversion each needs, and which thresholds raise events::

    {
      "id": "backyard",
      "url": "http://192.168.1.40/api/observations",
      "auth_header": "X-Api-Key",
      "auth_value": "…",
      "poll_interval_seconds": 60,
      "metrics": [
        {"metric": "temperature_c", "path": "[0].lastData.tempf", "convert": "f_to_c"},
        {"metric": "wind_speed_ms", "path": "obs[0].wind_avg", "convert": "mph_to_ms"},
        {"metric": "humidity_pct", "path": "[0].lastData.humidity", "unit": "%"}
      ],
      "thresholds": [
        {"metric": "wind_speed_ms", "above": 15, "event_type": "high_wind"}
      ]
    }

**Paths** pick one value out of the document. Object keys are separated by dots; list
items are addressed by index, either as a dotted segment or in brackets:

    ``lastData.tempf``     ``{"lastData": {"tempf": 68.0}}``
    ``0.lastData.tempf``   ``[{"lastData": {"tempf": 68.0}}]`` (same as ``[0].lastData.tempf``)
    ``obs[0].wind_avg``    ``{"obs": [{"wind_avg": 4.2}]}``
    ``obs[-1].wind_avg``   the last item of ``obs``
    ``data.0.tempf``       a digit segment indexes a list, or names the key "0" of an object

A bracketed index only ever indexes a list. Keys containing ``.``, ``[`` or ``]`` cannot
be addressed, and there are no wildcards or filters: one path, one value. Paths are
checked when the config is validated, so a malformed one is a config error.

**Conversions** use the exact definitions: C = (F - 32) * 5/9, hPa = inHg * 33.8638866667,
m/s = mph * 0.44704, mm = in * 25.4, km = mi * 1.609344. A converted value is rounded to
the metric's ``decimals`` (default 2, ``null`` for none), because the conversion is what
introduces digits the device never measured; values reported as they are (no
``convert``) pass through exactly as the device sent them.

**Failures** follow the supervisor's split between "the device is offline" and "the
config is wrong": connection errors, timeouts, 5xx, 408, 429, a body that is not JSON
and a document without any of the configured metrics raise ``DeviceUnavailable`` (the
session is kept and retried; one ``device.unavailable`` event per outage); 401/403
(``DeviceAuthRejected``), redirects and other 4xx (``DeviceRequestRejected``) are config
problems, so they count as crashes and back off.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, Self, TypeAlias, get_args

import attrs
import httpx
import trio
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    HttpUrl,
    SecretStr,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from runtime import (
    DeviceActor,
    DeviceUnavailable,
    PiPhiError,
    PollInterval,
    Reading,
    RuntimeConfig,
    Severity,
)

__all__ = [
    "CONVERSIONS",
    "Conversion",
    "ConversionName",
    "DeviceAuthRejected",
    "DeviceRequestRejected",
    "HttpJsonActor",
    "HttpJsonConfig",
    "MetricMap",
    "Threshold",
    "parse_path",
    "public_url",
    "resolve_path",
]

# -- unit conversions ----------------------------------------------------------------------


@attrs.frozen
class Conversion:
    """A unit conversion: the exact formula and the unit of its result."""

    convert: Callable[[float], float]
    unit: str


ConversionName: TypeAlias = Literal["f_to_c", "inhg_to_hpa", "mph_to_ms", "in_to_mm", "mi_to_km"]

CONVERSIONS: Mapping[ConversionName, Conversion] = {
    "f_to_c": Conversion(lambda f: (f - 32) * 5 / 9, "C"),
    "inhg_to_hpa": Conversion(lambda inhg: inhg * 33.8638866667, "hPa"),
    "mph_to_ms": Conversion(lambda mph: mph * 0.44704, "m/s"),
    "in_to_mm": Conversion(lambda inches: inches * 25.4, "mm"),
    "mi_to_km": Conversion(lambda mi: mi * 1.609344, "km"),
}
# The Literal is what validates configs; the table is what converts. Keep them one list.
assert set(get_args(ConversionName)) == set(CONVERSIONS)

# -- paths ---------------------------------------------------------------------------------

Step: TypeAlias = str | int
"""A key (``str``; digits also index a list) or a bracketed list index (``int``)."""

_SEGMENT = re.compile(r"(?P<name>[^.\[\]]*)(?P<indexes>(?:\[-?\d+\])*)")
_INT = re.compile(r"-?\d+")


def parse_path(path: str) -> tuple[Step, ...]:
    """Split a path (syntax in the module docstring) into steps; ValueError if malformed."""
    if not isinstance(path, str) or not path:
        raise ValueError("a path must be a non-empty string such as 'obs[0].wind_avg'")
    steps: list[Step] = []
    for part in path.split("."):
        match = _SEGMENT.fullmatch(part)
        if match is None or not part:
            raise ValueError(
                f"malformed path {path!r} at {part!r}: use keys separated by dots and "
                "list indexes as '.0' or '[0]', e.g. 'obs[0].wind_avg'"
            )
        if match["name"]:
            steps.append(match["name"])
        steps.extend(int(i) for i in _INT.findall(match["indexes"]))
    return tuple(steps)


def resolve_path(document: Any, steps: tuple[Step, ...]) -> Any:
    """The value at ``steps`` in ``document``; LookupError says where the path ran out."""
    value = document
    for depth, step in enumerate(steps):
        if isinstance(value, list):
            index = step if isinstance(step, int) else None
            if isinstance(step, str) and _INT.fullmatch(step):
                index = int(step)
            if index is None or not -len(value) <= index < len(value):
                raise LookupError(f"step {depth + 1} ({step!r}): a list of {len(value)} items")
            value = value[index]
        elif isinstance(value, dict) and isinstance(step, str):
            if step not in value:
                raise LookupError(f"step {depth + 1} ({step!r}): no such key")
            value = value[step]
        else:
            raise LookupError(f"step {depth + 1} ({step!r}): reached {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__} value"


# -- config --------------------------------------------------------------------------------

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
#: An HTTP header name (RFC 9110 token), so a typo cannot smuggle in a second header.
HeaderName = Annotated[str, StringConstraints(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")]

# Nested entries read camelCase too, like every model off the wire, but refuse unknown
# keys: a misspelt "convert" must not silently report Fahrenheit as Celsius.
_ENTRY = ConfigDict(
    alias_generator=to_camel,
    validate_by_name=True,
    validate_by_alias=True,
    extra="forbid",
    frozen=True,
)


class MetricMap(BaseModel):
    """One metric read from the document, e.g. ``{"metric": "temperature_c",
    "path": "[0].lastData.tempf", "convert": "f_to_c"}``."""

    model_config = _ENTRY

    metric: Name
    """The metric name reported to Core; unique within a config."""
    path: str
    """Where the value is in the document (syntax in the module docstring)."""
    unit: Name | None = None
    """The unit reported; defaults to the conversion's (C, hPa, m/s, mm, km), else none."""
    convert: ConversionName | None = None
    decimals: Annotated[int, Field(ge=0, le=12)] | None = 2
    """Converted values are rounded to this many decimals; None keeps every digit."""

    @field_validator("path")
    @classmethod
    def _check_path(cls, path: str) -> str:
        parse_path(path)
        return path

    @property
    def reported_unit(self) -> str | None:
        if self.unit is not None:
            return self.unit
        return CONVERSIONS[self.convert].unit if self.convert is not None else None


class Threshold(BaseModel):
    """An alarm region for one metric: values above ``above`` or below ``below``.

    Crossing into the region emits ``event_type`` with ``severity`` and
    ``data.state == "alarm"``; crossing back out emits the same type with severity
    ``info`` and ``data.state == "clear"``. Nothing is emitted while the value stays on
    one side. Bounds are strict (``above: 10`` alarms at 10.01, not at 10) and compare
    the value as reported, i.e. converted and rounded.
    """

    model_config = _ENTRY

    metric: Name
    above: FiniteFloat | None = None
    below: FiniteFloat | None = None
    event_type: Name = "threshold"
    severity: Severity = "warning"

    @model_validator(mode="after")
    def _check_bounds(self) -> Self:
        if self.above is None and self.below is None:
            raise ValueError(f"threshold for {self.metric!r} needs 'above', 'below' or both")
        if self.above is not None and self.below is not None and self.below >= self.above:
            raise ValueError(
                f"threshold for {self.metric!r}: 'below' ({self.below:g}) must be less than "
                f"'above' ({self.above:g}); the alarm region is outside [below, above]"
            )
        return self

    def side(self, value: float) -> Literal["above", "below"] | None:
        """Which bound ``value`` is beyond, or None when it is outside the alarm region."""
        if self.above is not None and value > self.above:
            return "above"
        if self.below is not None and value < self.below:
            return "below"
        return None


class HttpJsonConfig(RuntimeConfig):
    """One HTTP JSON device; the module docstring has an example.

    ``auth_value`` is a ``SecretStr``: masked in repr and dumps, a password field in the
    config form, and scrubbed from log lines by the runtime once the actor is set up."""

    url: HttpUrl
    """http or https; put credentials in ``auth_value``, not in the URL."""
    auth_header: HeaderName = "Authorization"
    auth_value: SecretStr | None = None
    """The whole header value, e.g. ``Bearer abc123``; no header is sent when unset."""
    timeout_seconds: Annotated[float, Field(gt=0, le=30, allow_inf_nan=False)] = 5.0
    """Bounds the whole request, connect to last byte; slower counts as offline."""
    verify_tls: bool = True
    """False accepts a self-signed certificate, common on LAN devices."""
    poll_interval_seconds: PollInterval = 30.0
    metrics: tuple[MetricMap, ...]
    thresholds: tuple[Threshold, ...] = ()

    # Field validators rather than one model validator, so errors name their field.
    @field_validator("metrics")
    @classmethod
    def _check_metrics(cls, metrics: tuple[MetricMap, ...]) -> tuple[MetricMap, ...]:
        # Here rather than min_length, which would also fire when an entry is invalid.
        if not metrics:
            raise ValueError("configure at least one metric")
        names = [m.metric for m in metrics]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"metric names must be unique; repeated: {', '.join(twice)}")
        return metrics

    @field_validator("thresholds")
    @classmethod
    def _check_thresholds(
        cls, thresholds: tuple[Threshold, ...], info: ValidationInfo
    ) -> tuple[Threshold, ...]:
        metrics = info.data.get("metrics")
        if metrics is None:
            return thresholds  # metrics failed validation; that error is the one to fix
        unknown = sorted({t.metric for t in thresholds} - {m.metric for m in metrics})
        if unknown:
            raise ValueError(f"thresholds refer to metrics not in 'metrics': {', '.join(unknown)}")
        return thresholds


# -- errors --------------------------------------------------------------------------------


class DeviceRequestRejected(PiPhiError):
    """The device answered, but refuses this request as configured (a redirect or a 4xx).

    Not ``DeviceUnavailable``: retrying the same request cannot help until the config
    changes, so the supervisor records it as a crash and backs off."""

    code = "device_request_rejected"
    default_hint = "Check the device config's url: the device does not serve JSON there."


class DeviceAuthRejected(DeviceRequestRejected):
    """The device answered 401 or 403: the credentials are missing or wrong."""

    code = "device_auth_rejected"
    default_hint = "Check auth_header and auth_value in the device config."


# -- the actor -----------------------------------------------------------------------------


def public_url(url: str) -> str:
    """``url`` without credentials, query or fragment (shown as ``?...``): safe to log.

    Vendor APIs often take keys in the query string, so messages never carry it."""
    parsed = httpx.URL(url)
    shown = str(parsed.copy_with(userinfo=b"", query=None, fragment=None))
    return f"{shown}?..." if parsed.query else shown


class HttpJsonActor(DeviceActor[HttpJsonConfig]):
    """Polls one URL and reports the configured metrics (see the module docstring)."""

    # A backstop only: timeout_seconds (at most 30 s) bounds each request first, with a
    # message that names the device, whatever the poll interval.
    poll_timeout = 60.0

    def __init__(self, config: HttpJsonConfig) -> None:
        super().__init__(config)
        self._client: httpx.AsyncClient | None = None
        self._where = public_url(str(config.url))
        self._paths = [(spec, parse_path(spec.path)) for spec in config.metrics]
        # Threshold index -> the side it is in alarm on. Kept on the instance, so a restart
        # after a crash neither repeats nor loses an alarm.
        self._alarms: dict[int, Literal["above", "below"]] = {}

    async def setup(self) -> None:
        """Open one HTTP client for the session, so polls reuse its connection."""
        config = self.config
        headers = {"Accept": "application/json"}
        if config.auth_value is not None:
            value = config.auth_value.get_secret_value()
            headers[config.auth_header] = value
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(config.timeout_seconds),
            verify=config.verify_tls,
            # A redirect is a config problem (and may carry the auth header elsewhere).
            follow_redirects=False,
        )

    async def teardown(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def poll(self) -> list[Reading]:
        readings = self._extract(await self._fetch())
        self._check_thresholds(readings)
        return readings

    async def _fetch(self) -> Any:
        """GET the URL and parse the body; every failure becomes an error that says which."""
        if self._client is None:
            raise RuntimeError("poll() before setup(): no HTTP client")
        where, timeout = self._where, self.config.timeout_seconds
        response: httpx.Response | None = None
        with trio.move_on_after(timeout):
            try:
                response = await self._client.get(str(self.config.url))
            except httpx.TimeoutException:
                pass  # reported below, like the overall deadline
            except httpx.RequestError as exc:
                # `from None`: the chained exception would only repeat this, with the URL.
                raise DeviceUnavailable(f"GET {where} failed: {_describe(exc)}") from None
        if response is None:
            raise DeviceUnavailable(f"GET {where} did not answer within {timeout:g} s")
        status = response.status_code
        answered = f"GET {where} answered {status} {httpx.codes.get_reason_phrase(status)}"
        if status in (401, 403):
            hint = (
                "The device wants credentials: set auth_value (and auth_header if it is "
                "not 'Authorization')."
                if self.config.auth_value is None
                else f"The device refused the {self.config.auth_header} header: check "
                "auth_value and auth_header."
            )
            raise DeviceAuthRejected(f"{answered}: the device refused the credentials", hint=hint)
        if status >= 500 or status in (408, 429):
            raise DeviceUnavailable(answered)
        if 300 <= status < 400:
            location = response.headers.get("location")
            to = f" to {public_url(str(response.url.join(location)))}" if location else ""
            raise DeviceRequestRejected(
                f"{answered}: redirected{to}",
                hint="Set url to the address the device redirects to.",
            )
        if not 200 <= status < 300:
            raise DeviceRequestRejected(answered)
        try:
            return json.loads(response.content)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            raise DeviceUnavailable(f"GET {where} returned invalid JSON: {exc}") from None

    def _extract(self, document: Any) -> list[Reading]:
        readings: list[Reading] = []
        for spec, steps in self._paths:
            try:
                raw = resolve_path(document, steps)
            except LookupError as exc:
                self.log.debug("%s: path %r not found (%s); skipped", spec.metric, spec.path, exc)
                continue
            value = self._value(spec, raw)
            if value is not None:
                readings.append(Reading(spec.metric, value, spec.reported_unit))
        if not readings:
            raise DeviceUnavailable(
                f"GET {self._where} answered, but none of the {len(self._paths)} configured "
                "metrics could be read from it",
                hint="If the device is up, its JSON may not match the metric paths: the "
                "debug log says which step of each path failed.",
            )
        return readings

    def _value(self, spec: MetricMap, raw: Any) -> bool | int | float | str | None:
        """The value to report, or None (logged at debug) when there is none."""
        numeric = isinstance(raw, int | float) and not isinstance(raw, bool)
        if numeric and isinstance(raw, float) and not math.isfinite(raw):
            reason = f"{raw} is not a finite number"  # json.loads accepts NaN and Infinity
        elif spec.convert is None:
            if isinstance(raw, bool | int | float | str):
                return raw
            reason = f"{_kind(raw)} is not a value"
        elif not numeric:
            reason = f"{_kind(raw)} cannot be converted with {spec.convert}"
        else:
            try:
                value = CONVERSIONS[spec.convert].convert(float(raw))
            except OverflowError:
                value = math.inf
            if not math.isfinite(value):
                reason = f"{raw} is out of range for {spec.convert}"
            else:
                return value if spec.decimals is None else round(value, spec.decimals)
        self.log.debug("%s: %s at %r; skipped", spec.metric, reason, spec.path)
        return None

    def _check_thresholds(self, readings: list[Reading]) -> None:
        """Emit an event when a metric enters or leaves a threshold's alarm region."""
        if not self.config.thresholds:
            return
        values = {r.metric: r for r in readings}
        for index, threshold in enumerate(self.config.thresholds):
            reading = values.get(threshold.metric)
            if reading is None or isinstance(reading.value, bool | str):
                continue  # no number this poll: the alarm state stands
            side = threshold.side(reading.value)
            was = self._alarms.get(index)
            if (side is None) == (was is None):
                continue
            data = {
                "metric": threshold.metric,
                "value": reading.value,
                "unit": reading.unit,
                "above": threshold.above,
                "below": threshold.below,
            }
            if side is not None:
                self._alarms[index] = side
                self.emit_event(
                    threshold.event_type,
                    {**data, "state": "alarm", "side": side},
                    severity=threshold.severity,
                )
            else:
                del self._alarms[index]
                self.emit_event(
                    threshold.event_type, {**data, "state": "clear", "side": was}, severity="info"
                )


def _describe(exc: Exception) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
