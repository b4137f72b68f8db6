import copy
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, get_args

import pytest
import trio
from pydantic import ValidationError

from actors.http_json import (
    CONVERSIONS,
    ConversionName,
    DeviceAuthRejected,
    DeviceRequestRejected,
    HttpJsonActor,
    HttpJsonConfig,
    parse_path,
    public_url,
    resolve_path,
)
from runtime import ActorState, DeviceUnavailable, InvalidConfig
from runtime._config import validate_config
from runtime.lowlevel import ActorNursery
from runtime.testing import RecordingSink

from ..helpers import wait_until
from .fake_device import AMBIENT_PAYLOAD, WEATHERFLOW_PAYLOAD, FakeDevice

SECRET = "sk-live-7f3a9c2e-do-not-log"

AMBIENT_METRICS = [
    {"metric": "temperature_c", "path": "[0].lastData.tempf", "convert": "f_to_c"},
    {"metric": "pressure_hpa", "path": "0.lastData.baromrelin", "convert": "inhg_to_hpa"},
    {"metric": "wind_speed_ms", "path": "[0].lastData.windspeedmph", "convert": "mph_to_ms"},
    {
        "metric": "rain_rate_mm_h",
        "path": "[0].lastData.hourlyrainin",
        "convert": "in_to_mm",
        "unit": "mm/h",
    },
    {"metric": "humidity_pct", "path": "[0].lastData.humidity", "unit": "%"},
]


def f_to_c(f: float) -> float:
    return (f - 32) * 5 / 9


FORMULAS: dict[str, Callable[[float], float]] = {
    "f_to_c": f_to_c,
    "inhg_to_hpa": lambda x: x * 33.8638866667,
    "mph_to_ms": lambda x: x * 0.44704,
    "in_to_mm": lambda x: x * 25.4,
    "mi_to_km": lambda x: x * 1.609344,
}


def config(url: str, **fields: Any) -> dict[str, Any]:
    return {"id": "ws-1", "url": url, "metrics": AMBIENT_METRICS, **fields}


def ambient(**last_data: Any) -> list[dict[str, Any]]:
    payload = copy.deepcopy(AMBIENT_PAYLOAD)
    payload[0]["lastData"].update(last_data)
    return payload


@pytest.fixture
async def device(nursery: trio.Nursery) -> FakeDevice:
    fake = FakeDevice()
    await nursery.start(fake.serve)
    return fake


@asynccontextmanager
async def session(data: dict[str, Any]) -> AsyncIterator[HttpJsonActor]:
    """An actor outside a supervisor: setup, polls by hand, teardown."""
    actor = HttpJsonActor(validate_config(HttpJsonConfig, data))
    await actor.setup()
    try:
        yield actor
    finally:
        await actor.teardown()


def values(readings: Any) -> dict[str, tuple[Any, str | None]]:
    return {r.metric: (r.value, r.unit) for r in readings}


# -- conversions and paths -----------------------------------------------------------------


def test_the_conversion_table_and_the_config_literal_agree() -> None:
    assert set(CONVERSIONS) == set(get_args(ConversionName)) == set(FORMULAS)
    assert {name: c.unit for name, c in CONVERSIONS.items()} == {
        "f_to_c": "C",
        "inhg_to_hpa": "hPa",
        "mph_to_ms": "m/s",
        "in_to_mm": "mm",
        "mi_to_km": "km",
    }


@pytest.mark.parametrize(
    ("name", "given", "expected"),
    [
        ("f_to_c", 212.0, 100.0),
        ("f_to_c", 32.0, 0.0),
        ("f_to_c", -40.0, -40.0),
        ("f_to_c", 68.0, 20.0),
        ("inhg_to_hpa", 1.0, 33.8638866667),
        ("mph_to_ms", 1.0, 0.44704),
        ("mph_to_ms", 10.0, 4.4704),
        ("in_to_mm", 1.0, 25.4),
        ("in_to_mm", 0.0, 0.0),
        ("mi_to_km", 1.0, 1.609344),
    ],
)
def test_conversions_hit_their_defining_points(name: str, given: float, expected: float) -> None:
    assert CONVERSIONS[name].convert(given) == pytest.approx(expected, rel=1e-15, abs=1e-12)  # type: ignore[index]


@pytest.mark.parametrize("name", sorted(FORMULAS))
@pytest.mark.parametrize("given", [-12.5, 0.01, 0.1, 29.92, 51.3, 68.0, 1234.5678])
def test_conversions_are_the_exact_formulas(name: str, given: float) -> None:
    assert CONVERSIONS[name].convert(given) == FORMULAS[name](given)  # type: ignore[index]


@pytest.mark.parametrize(
    ("path", "steps"),
    [
        ("tempf", ("tempf",)),
        ("data.0.tempf", ("data", "0", "tempf")),
        ("obs[0].wind_avg", ("obs", 0, "wind_avg")),
        ("[0].lastData.tempf", (0, "lastData", "tempf")),
        ("obs[-1]", ("obs", -1)),
        ("grid[1][2]", ("grid", 1, 2)),
        ("Outdoor Temp", ("Outdoor Temp",)),
    ],
)
def test_paths_parse(path: str, steps: tuple[Any, ...]) -> None:
    assert parse_path(path) == steps


@pytest.mark.parametrize("path", ["", "a..b", ".a", "a.", "a[x]", "a[0", "a]", "a[0]b", "[]"])
def test_malformed_paths_are_refused(path: str) -> None:
    with pytest.raises(ValueError, match="path"):
        parse_path(path)


def test_paths_resolve_through_objects_and_lists() -> None:
    doc = {"data": [{"t": 1}, {"t": 2}], "obs": [[7, 8]], "map": {"0": "zero"}}
    assert resolve_path(doc, parse_path("data.1.t")) == 2
    assert resolve_path(doc, parse_path("data[-1].t")) == 2
    assert resolve_path(doc, parse_path("obs[0][1]")) == 8
    assert resolve_path(doc, parse_path("map.0")) == "zero"  # a digit key of an object
    for missing, where in [
        ("data.2.t", "a list of 2 items"),
        ("data.x", "a list of 2 items"),
        ("nope", "no such key"),
        ("data.0.t.deeper", "reached a int value"),
        ("map[0]", "reached an object"),  # brackets only ever index a list
    ]:
        with pytest.raises(LookupError, match=where):
            resolve_path(doc, parse_path(missing))


def test_public_url_drops_credentials_and_query() -> None:
    assert public_url("http://u:pw@10.0.0.5:8080/api?apiKey=k#x") == "http://10.0.0.5:8080/api?..."
    assert public_url("https://10.0.0.5/") == "https://10.0.0.5/"


# -- config --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"metrics": [{"metric": "t", "path": "a", "convert": "c_to_f"}]}, "metrics.0.convert"),
        ({"metrics": [{"metric": "t", "path": "a..b"}]}, "metrics.0.path"),
        ({"metrics": [{"metric": "t", "path": "a", "conver": "f_to_c"}]}, "metrics.0.conver"),
        ({"metrics": [{"metric": " ", "path": "a"}]}, "metrics.0.metric"),
        ({"metrics": []}, "metrics"),
        ({"url": "ftp://10.0.0.5/data"}, "url"),
        ({"url": "10.0.0.5/data"}, "url"),
        ({"auth_header": "X-Key: evil\r\nX-Other"}, "auth_header"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"timeout_seconds": 120}, "timeout_seconds"),
        ({"thresholds": [{"metric": "temperature_c"}]}, "thresholds.0"),
        ({"thresholds": [{"metric": "temperature_c", "above": 1, "below": 5}]}, "thresholds.0"),
        ({"thresholds": [{"metric": "temperature_c", "above": 1, "severity": "bad"}]}, "severity"),
        ({"thresholds": [{"metric": "dew_point_c", "above": 1}]}, "thresholds"),
        ({"metrics": [*AMBIENT_METRICS, {"metric": "humidity_pct", "path": "b"}]}, "metrics"),
    ],
)
def test_a_bad_config_fails_validation(change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidConfig) as info:
        validate_config(HttpJsonConfig, {**config("http://10.0.0.5/"), **change})
    assert field in info.value.message


def test_a_bad_conversion_name_lists_the_valid_ones() -> None:
    with pytest.raises(ValidationError) as info:
        HttpJsonConfig.model_validate(
            config("http://10.0.0.5/", metrics=[{"metric": "t", "path": "a", "convert": "k"}])
        )
    (error,) = info.value.errors()
    assert error["loc"] == ("metrics", 0, "convert")
    assert "'f_to_c', 'inhg_to_hpa', 'mph_to_ms', 'in_to_mm' or 'mi_to_km'" in error["msg"]


def test_config_defaults_and_camel_case() -> None:
    cfg = HttpJsonConfig.model_validate(
        {
            "id": "ws",
            "url": "https://10.0.0.5/api",
            "authHeader": "X-Api-Key",
            "authValue": SECRET,
            "timeoutSeconds": 2,
            "verifyTls": False,
            "metrics": [{"metric": "t", "path": "a", "convert": "f_to_c", "decimals": None}],
            "thresholds": [{"metric": "t", "below": 0, "eventType": "frost"}],
        }
    )
    assert (cfg.auth_header, cfg.timeout_seconds, cfg.verify_tls) == ("X-Api-Key", 2.0, False)
    assert cfg.metrics[0].decimals is None and cfg.metrics[0].reported_unit == "C"
    assert cfg.thresholds[0].event_type == "frost" and cfg.thresholds[0].severity == "warning"
    defaults = HttpJsonConfig.model_validate(config("http://10.0.0.5/"))
    assert defaults.auth_header == "Authorization" and defaults.auth_value is None
    assert defaults.timeout_seconds == 5.0 and defaults.poll_interval_seconds == 30.0
    assert defaults.metrics[0].decimals == 2 and defaults.metrics[4].reported_unit == "%"


def test_the_secret_never_shows_in_the_config() -> None:
    cfg = HttpJsonConfig.model_validate(config("http://10.0.0.5/", auth_value=SECRET))
    assert cfg.auth_value is not None and cfg.auth_value.get_secret_value() == SECRET
    for text in (repr(cfg), str(cfg), cfg.model_dump_json(), str(cfg.model_dump())):
        assert SECRET not in text
        assert "**********" in text


# -- polls, by hand ------------------------------------------------------------------------


async def test_an_ambient_payload_becomes_rounded_si_readings(
    device: FakeDevice, autojump_clock: Any
) -> None:
    async with session(config(device.url)) as actor:
        readings = await actor.poll()
    assert values(readings) == {
        "temperature_c": (20.0, "C"),
        "pressure_hpa": (round(29.92 * 33.8638866667, 2), "hPa"),
        "wind_speed_ms": (4.47, "m/s"),
        "rain_rate_mm_h": (2.54, "mm/h"),
        "humidity_pct": (55, "%"),  # passed through as sent: an int
    }
    assert values(readings)["pressure_hpa"][0] == 1013.21
    assert device.requests[0].target == "/api/observations"


async def test_unrounded_conversions_are_exact_end_to_end(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    station = FakeDevice(WEATHERFLOW_PAYLOAD)
    await nursery.start(station.serve)
    metrics = [
        ("air_temperature", "f_to_c"),
        ("sea_level_pressure", "inhg_to_hpa"),
        ("wind_avg", "mph_to_ms"),
        ("precip_accum_last_1hr", "in_to_mm"),
        ("lightning_strike_last_distance", "mi_to_km"),
    ]
    data = config(
        station.url,
        metrics=[
            {"metric": key, "path": f"obs[0].{key}", "convert": name, "decimals": None}
            for key, name in metrics
        ],
    )
    async with session(data) as actor:
        readings = values(await actor.poll())
    obs = WEATHERFLOW_PAYLOAD["obs"][0]
    for key, name in metrics:
        assert readings[key] == (FORMULAS[name](obs[key]), CONVERSIONS[name].unit)  # type: ignore[index]


async def test_missing_and_unconvertible_values_are_skipped(
    device: FakeDevice, autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="actors.http_json")
    device.payloads = [ambient(tempf="n/a", uv=None, battout=True, solarradiation=float("nan"))]
    metrics = [
        {"metric": "temperature_c", "path": "[0].lastData.tempf", "convert": "f_to_c"},
        {"metric": "uv_index", "path": "[0].lastData.uv"},
        {"metric": "battery_ok", "path": "[0].lastData.battout"},
        {"metric": "battery_c", "path": "[0].lastData.battout", "convert": "f_to_c"},
        {"metric": "solar_w_m2", "path": "[0].lastData.solarradiation"},
        {"metric": "timezone", "path": "[0].lastData.tz"},
        {"metric": "station", "path": "[0].info"},
        {"metric": "dew_point_c", "path": "[0].lastData.dewPoint", "convert": "f_to_c"},
        {"metric": "second_station_c", "path": "[1].lastData.tempf", "convert": "f_to_c"},
        {"metric": "humidity_pct", "path": "[0].lastData.humidity", "unit": "%"},
    ]
    async with session(config(device.url, metrics=metrics)) as actor:
        readings = values(await actor.poll())
    # Booleans and strings pass through when no conversion is asked for; nothing else does.
    assert readings == {
        "battery_ok": (True, None),
        "timezone": ("America/Los_Angeles", None),
        "humidity_pct": (55, "%"),
    }
    log = caplog.text
    assert "temperature_c: a str value cannot be converted with f_to_c" in log
    assert "uv_index: null is not a value" in log
    assert "battery_c: a bool value cannot be converted with f_to_c" in log
    assert "solar_w_m2: nan is not a finite number" in log
    assert "station: an object is not a value" in log
    assert "dew_point_c: path '[0].lastData.dewPoint' not found (step 3 ('dewPoint')" in log
    assert "second_station_c: path '[1].lastData.tempf' not found (step 1 (1)" in log
    assert all(r.levelno == logging.DEBUG for r in caplog.records)


async def test_a_document_without_any_metric_is_unavailable(
    device: FakeDevice, autojump_clock: Any
) -> None:
    device.body = b'{"error": "sensor warming up"}'
    async with session(config(device.url)) as actor:
        with pytest.raises(DeviceUnavailable, match="none of the 5 configured metrics"):
            await actor.poll()


@pytest.mark.parametrize(
    ("status", "error", "message"),
    [
        (500, DeviceUnavailable, "answered 500 Internal Server Error"),
        (503, DeviceUnavailable, "answered 503 Service Unavailable"),
        (429, DeviceUnavailable, "answered 429 Too Many Requests"),
        (401, DeviceAuthRejected, "answered 401 Unauthorized: the device refused the credentials"),
        (403, DeviceAuthRejected, "answered 403 Forbidden: the device refused the credentials"),
        (404, DeviceRequestRejected, "answered 404 Not Found"),
        (302, DeviceRequestRejected, "answered 302 Found: redirected to https://127.0.0.1/x"),
    ],
)
async def test_statuses_map_to_offline_or_config_errors(
    device: FakeDevice, autojump_clock: Any, status: int, error: type[Exception], message: str
) -> None:
    device.status = status
    device.headers = [("location", "https://127.0.0.1/x?token=abc")] if status == 302 else []
    async with session(config(device.url)) as actor:
        with pytest.raises(error) as info:
            await actor.poll()
    assert f"GET {device.url} {message}" in str(info.value)
    assert "token=abc" not in str(info.value)
    # Offline is retried with the session kept; a config error is a crash, so not that.
    assert isinstance(info.value, DeviceUnavailable) == (status >= 429)


async def test_a_hung_device_times_out_at_timeout_seconds(
    device: FakeDevice, autojump_clock: Any
) -> None:
    device.hang = True
    async with session(config(device.url, timeout_seconds=3)) as actor:
        start = trio.current_time()
        with pytest.raises(DeviceUnavailable, match="did not answer within 3 s"):
            await actor.poll()
        assert trio.current_time() - start == pytest.approx(3.0, abs=0.01)


async def test_invalid_json_is_unavailable_with_the_reason(
    device: FakeDevice, autojump_clock: Any
) -> None:
    device.body = b"<html><body>Login</body></html>"
    async with session(config(device.url)) as actor:
        with pytest.raises(DeviceUnavailable, match=r"invalid JSON: Expecting value: line 1"):
            await actor.poll()


async def test_one_client_per_session_closed_at_teardown(
    device: FakeDevice, autojump_clock: Any
) -> None:
    actor = HttpJsonActor(validate_config(HttpJsonConfig, config(device.url)))
    await actor.setup()
    client = actor._client
    assert client is not None
    clients = []
    for _ in range(3):
        await actor.poll()
        clients.append(actor._client)
    assert clients == [client] * 3
    await actor.teardown()
    assert client.is_closed and actor._client is None
    await actor.teardown()  # idempotent


# -- under the supervisor ------------------------------------------------------------------


async def test_readings_reach_the_sink_with_identities_and_units(
    actors: ActorNursery, sink: RecordingSink, device: FakeDevice, autojump_clock: Any
) -> None:
    sup = actors.spawn(
        HttpJsonActor,
        config(
            device.url,
            config_id="cfg-7",
            device_id="backyard-station",
            container_id="c-1",
            integration_id="lan-weather",
            poll_interval_seconds=10,
        ),
    )
    await wait_until(lambda: len(sink.telemetry_for("backyard-station")) >= 3)
    record = sink.telemetry_for("backyard-station")[0]
    assert (record.identity.config_id, record.identity.device_id) == ("cfg-7", "backyard-station")
    assert (record.identity.container_id, record.identity.integration_id) == ("c-1", "lan-weather")
    assert values(record.readings) == {
        "temperature_c": (20.0, "C"),
        "pressure_hpa": (1013.21, "hPa"),
        "wind_speed_ms": (4.47, "m/s"),
        "rain_rate_mm_h": (2.54, "mm/h"),
        "humidity_pct": (55, "%"),
    }
    assert sup.health().restarts_total == 0 and sink.event_count == 0


async def test_thresholds_emit_once_on_entering_and_once_on_leaving(
    actors: ActorNursery, sink: RecordingSink, device: FakeDevice, autojump_clock: Any
) -> None:
    # Wind in mph and temperature in F, observed poll by poll; thresholds are in SI.
    series = [(5, 40), (30, 30), (35, 20), (31, 25), (10, 50), (8, 60), (12, 28)]
    device.payloads = [ambient(windspeedmph=w, tempf=t) for w, t in series]
    thresholds = [
        {"metric": "wind_speed_ms", "above": 10, "event_type": "high_wind", "severity": "error"},
        {"metric": "temperature_c", "below": 0, "event_type": "frost"},
    ]
    sup = actors.spawn(
        HttpJsonActor, config(device.url, thresholds=thresholds, poll_interval_seconds=1)
    )
    await wait_until(lambda: sup.health().polls >= len(series) + 3)

    wind = sink.events("high_wind")
    assert [(e.severity, e.data["state"], e.data["value"]) for e in wind] == [
        ("error", "alarm", 13.41),  # 30 mph: entered
        ("info", "clear", 4.47),  # 10 mph: left
    ]
    assert wind[0].data == {
        "metric": "wind_speed_ms",
        "value": 13.41,
        "unit": "m/s",
        "above": 10.0,
        "below": None,
        "state": "alarm",
        "side": "above",
    }
    frost = sink.events("frost")
    assert [(e.severity, e.data["state"], e.data["side"]) for e in frost] == [
        ("warning", "alarm", "below"),  # 30 F = -1.11 C
        ("info", "clear", "below"),  # 50 F
        ("warning", "alarm", "below"),  # 28 F, the last payload, repeated from then on
    ]
    assert [e.data["value"] for e in frost] == [-1.11, 10.0, -2.22]
    assert all(e.device_id == "ws-1" for e in wind + frost)


async def test_an_alarm_outlives_a_missing_value(
    actors: ActorNursery, sink: RecordingSink, device: FakeDevice, autojump_clock: Any
) -> None:
    gap = ambient(windspeedmph=40)
    del gap[0]["lastData"]["windspeedmph"]
    device.payloads = [ambient(windspeedmph=40), gap, ambient(windspeedmph=41)]
    thresholds = [{"metric": "wind_speed_ms", "above": 10}]
    sup = actors.spawn(
        HttpJsonActor, config(device.url, thresholds=thresholds, poll_interval_seconds=1)
    )
    await wait_until(lambda: sup.health().polls >= 5)
    assert [e.data["state"] for e in sink.events("threshold")] == ["alarm"]


async def _unplug(device: FakeDevice) -> None:
    await device.down()


async def _plug_in(device: FakeDevice) -> None:
    await device.up()


def _set(**fields: Any) -> Callable[[FakeDevice], Any]:
    async def apply(device: FakeDevice) -> None:
        for name, value in fields.items():
            setattr(device, name, value)

    return apply


async def _heal(device: FakeDevice) -> None:
    device.healthy()


@pytest.mark.parametrize(
    ("fail", "recover", "reason"),
    [
        (_unplug, _plug_in, "failed: ConnectError"),
        (_set(status=500), _heal, "answered 500 Internal Server Error"),
        (_set(hang=True), _heal, "did not answer within 5 s"),
        (_set(drop=True), _heal, "failed: RemoteProtocolError"),
        (_set(body=b"\xff\xfe garbage"), _heal, "returned invalid JSON"),
        (_set(body=b"{}"), _heal, "none of the 5 configured metrics"),
    ],
    ids=["unplugged", "500", "hang", "drop", "invalid-json", "no-metrics"],
)
async def test_an_offline_device_is_reported_once_and_recovers(
    actors: ActorNursery,
    sink: RecordingSink,
    device: FakeDevice,
    autojump_clock: Any,
    fail: Callable[[FakeDevice], Any],
    recover: Callable[[FakeDevice], Any],
    reason: str,
) -> None:
    sup = actors.spawn(HttpJsonActor, config(device.url, poll_interval_seconds=10))
    await wait_until(lambda: sink.telemetry_count >= 2)
    await fail(device)
    await wait_until(lambda: "device.unavailable" in sink.event_types())
    polls = sup.health().polls
    await wait_until(lambda: sup.health().polls >= polls + 3)  # retries: still one event
    health = sup.health()
    assert health.state is ActorState.UNAVAILABLE and health.restarts_total == 0
    assert health.last_error is not None and reason in health.last_error.message
    (event,) = sink.events("device.unavailable")
    assert event.data["reason"] == "offline" and reason in event.data["message"]

    before = sink.telemetry_count
    await recover(device)
    await wait_until(lambda: "device.available" in sink.event_types())
    await wait_until(lambda: sink.telemetry_count >= before + 2)
    assert sink.event_types("ws-1") == ["device.unavailable", "device.available"]
    assert sup.state is ActorState.RUNNING and sup.health().restarts_total == 0


async def test_refused_credentials_are_a_recorded_crash_with_a_clear_message(
    actors: ActorNursery, sink: RecordingSink, device: FakeDevice, autojump_clock: Any
) -> None:
    device.required = ("Authorization", "Bearer right")
    sup = actors.spawn(HttpJsonActor, config(device.url, auth_value="Bearer wrong"))
    await wait_until(lambda: sup.health().restarts_total >= 2)
    error = sup.health().last_error
    assert error is not None
    assert (error.type, error.code, error.phase) == (
        "DeviceAuthRejected",
        "device_auth_rejected",
        "poll",
    )
    assert (
        error.message
        == f"GET {device.url} answered 401 Unauthorized: the device refused the credentials"
    )
    assert "check auth_value and auth_header" in error.hint
    # A device that produces no data is unavailable, whatever the cause (issue 13): Core
    # hears it once, with the reason and the hint.
    (event,) = sink.events("device.unavailable")
    assert event.data["reason"] == "crashing" and event.data["hint"] == error.hint
    assert sink.telemetry_count == 0
    assert device.requests[0].headers["authorization"] == "Bearer wrong"


async def test_missing_credentials_say_to_set_them(
    actors: ActorNursery, device: FakeDevice, autojump_clock: Any
) -> None:
    device.required = ("Authorization", "Bearer right")
    sup = actors.spawn(HttpJsonActor, config(device.url))
    await wait_until(lambda: sup.health().restarts_total >= 1)
    error = sup.health().last_error
    assert error is not None and "set auth_value" in error.hint
    assert "authorization" not in device.requests[0].headers


async def test_the_auth_header_is_sent_and_the_secret_never_logged(
    actors: ActorNursery,
    sink: RecordingSink,
    device: FakeDevice,
    autojump_clock: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    device.required = ("X-Api-Key", SECRET)
    sup = actors.spawn(
        HttpJsonActor, config(device.url, auth_header="X-Api-Key", auth_value=SECRET)
    )
    await wait_until(lambda: sink.telemetry_count >= 2)
    assert device.requests[0].headers["x-api-key"] == SECRET
    assert "authorization" not in device.requests[0].headers

    # The key is rotated on the device: crashes, logged with their tracebacks.
    device.required = ("X-Api-Key", "rotated")
    await wait_until(lambda: sup.health().restarts_total >= 2)
    device.hang = True  # and an outage, logged too
    await wait_until(lambda: "device.unavailable" in sink.event_types())

    assert "poll() raised; restarting with backoff" in caplog.text
    assert "device unavailable" in caplog.text
    assert SECRET not in caplog.text
    for record in caplog.records:
        assert SECRET not in record.getMessage()
        assert SECRET not in repr(record.__dict__)
    assert SECRET not in str(sup.health().to_dict())
    assert SECRET not in repr(sup.actor.config)
    assert all(SECRET not in repr(e) for e in sink.event_records)
