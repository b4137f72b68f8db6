"""The runnable examples, driven on the virtual clock."""

import importlib.util
from pathlib import Path
from typing import Any

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
