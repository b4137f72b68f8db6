"""The runnable examples, driven on the virtual clock."""

import importlib.util
from functools import partial
from pathlib import Path
from typing import Any

import trio

from runtime.testing import assert_event_sent, assert_telemetry_sent

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_supervised_devices_demo_shows_supervision_at_work(autojump_clock: Any) -> None:
    demo = load("supervised_devices")
    lines: list[str] = []
    summary = await demo.main(40, show=lines.append)
    output = "\n".join(lines)
    assert summary.devices == 4
    # Four devices at 1 Hz for 40 s, three to four readings each, minus the flaky one's gaps.
    assert 400 < summary.readings < 4 * 4 * 41
    assert summary.restarts >= 3, "the flaky plug crashes every 7th poll"
    assert "garage-plug:device.unavailable" in summary.events
    assert "garage-plug:device.available" in summary.events
    assert not any(
        e.startswith(("living-room", "desk-plug", "bedroom-air")) for e in summary.events
    )
    assert "command turn_off to desk-plug: {'is_on': False}" in output
    assert "backoff" in output or "unavailable" in output
    assert output.splitlines()[-len(summary.events) - 1].startswith("summary: devices=4")


async def test_the_make_demo_delivers_from_every_device_and_shows_a_restart(
    autojump_clock: Any, tmp_path: Path
) -> None:
    demo = load("demo")
    views: list[Any] = []
    summary = await demo.run_demo(20, show=views.append, state_dir=tmp_path)
    assert summary.devices == 5
    assert set(summary.readings) == {d["id"] for d in demo.DEVICES}
    assert all(n >= 1 for n in summary.readings.values()), summary.readings
    steady = {d: n for d, n in summary.readings.items() if d != "garage-plug"}
    assert all(n >= 18 for n in steady.values()), "one reading a second, delivered"
    assert summary.restarts >= 1, "the flaky plug crashes every 7th poll"
    assert "garage-plug:device.unavailable" in summary.events
    assert len(views) >= 19
    assert summary.line().startswith("summary: devices=5 readings_delivered=")


async def test_lan_weather_end_to_end_against_the_dev_core(
    devcore: Any, run_integration: Any, nursery: Any, autojump_clock: Any
) -> None:
    lan_weather = load("lan_weather")
    station = (await nursery.start(lan_weather.serve_station))[0]
    async with run_integration(lan_weather.integration) as rt:
        config = lan_weather.station_config("backyard", f"{station}/api/observations")
        answer = await rt.configure(config)
        assert answer["applied"] == ["backyard"]
        await trio.sleep(65)
        ui = (await rt.http.get("/ui-config")).json()
        logs = (await rt.http.get("/diagnostics")).text
    stored = await assert_telemetry_sent(devcore, device_id="backyard", at_least=6)
    first = stored[0]
    assert first["units"] == {
        "temperature_c": "C",
        "humidity_pct": "%",
        "pressure_hpa": "hPa",
        "wind_ms": "m/s",
        "rain_mm_h": "mm/h",
    }
    assert first["metrics"]["pressure_hpa"] == round(29.92 * 33.8638866667, 2)
    assert first["metrics"]["rain_mm_h"] == round(0.02 * 25.4, 2)
    assert 15 < first["metrics"]["temperature_c"] < 25
    await assert_event_sent(devcore, "high_wind", device_id="backyard")
    assert ui["uiSchema"]["auth_value"] == {"ui:widget": "password"}
    assert lan_weather.STATION_KEY not in logs


async def test_rtl433_bridge_end_to_end_against_the_dev_core_and_mosquitto(
    devcore: Any, run_integration: Any, nursery: Any, tmp_path: Path
) -> None:
    # Real time: the broker is a real process. Bounded by fail_after.
    from tests.actors.broker import Broker

    bridge = load("rtl433_bridge")
    broker = Broker(tmp_path)
    await broker.start()
    try:
        url = f"mqtt://{broker.host}:{broker.port}"
        async with run_integration(bridge.integration, PIPHI_MQTT_URL=url) as rt:
            configs = [
                bridge.sensor_config(f"sensor-{i}", hint) for i, hint in enumerate(bridge.SENSORS)
            ]
            answer = await rt.configure(*configs)
            assert answer["applied"] == ["sensor-0", "sensor-1"]
            await trio.sleep(0.5)  # subscribed
            with trio.fail_after(20):
                async with trio.open_nursery() as publishing:
                    publishing.start_soon(
                        partial(bridge.fake_rtl433, broker.host, broker.port, every=0.2, count=5)
                    )
            with trio.fail_after(20):
                # A bounded poll of what the dev Core has stored: no event to wait on.
                while len(await devcore.telemetry(device_id="sensor-1")) < 5:  # noqa: ASYNC110
                    await trio.sleep(0.1)
    finally:
        await broker.stop()
    for device in ("sensor-0", "sensor-1"):
        stored = await assert_telemetry_sent(devcore, device_id=device, at_least=5)
        assert stored[0]["metrics"] == {"temperature_c": 20.0, "humidity": 45, "battery_ok": 1}
        assert stored[0]["units"] == {"temperature_c": "C", "humidity": "%"}
        assert stored[0]["container_id"] == devcore.container_id
