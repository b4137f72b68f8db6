from typing import Any

import pytest

from actors.simulated import (
    SIMULATED_ACTORS,
    SimulatedAirQuality,
    SimulatedConfig,
    SimulatedPlug,
    SimulatedThermostat,
)
from runtime import ActorState, DeviceUnavailable
from runtime.lowlevel import ActorNursery, CallFailed

from ..helpers import wait_until


async def read_series(cls: Any, config: SimulatedConfig, polls: int) -> list[Any]:
    actor = cls(config)
    await actor.setup()
    return [await actor.poll() for _ in range(polls)]


@pytest.mark.parametrize("cls", list(SIMULATED_ACTORS.values()))
async def test_readings_are_deterministic_per_seed_and_device(cls: Any) -> None:
    a = await read_series(cls, SimulatedConfig(id="d1", seed=1), 20)
    b = await read_series(cls, SimulatedConfig(id="d1", seed=1), 20)
    other_seed = await read_series(cls, SimulatedConfig(id="d1", seed=2), 20)
    other_device = await read_series(cls, SimulatedConfig(id="d2", seed=1), 20)
    assert a == b
    assert a != other_seed and a != other_device


async def test_each_kind_reports_plausible_metrics_with_units() -> None:
    (thermo,) = await read_series(SimulatedThermostat, SimulatedConfig(id="t"), 1)
    values = {r.metric: (r.value, r.unit) for r in thermo}
    assert 17 < values["temperature_c"][0] < 23 and values["temperature_c"][1] == "C"
    assert values["hvac_action"][0] in {"heating", "idle"}
    (plug,) = await read_series(SimulatedPlug, SimulatedConfig(id="p"), 1)
    assert {r.metric for r in plug} == {"is_on", "current_power_w", "energy_kwh"}
    (air,) = await read_series(SimulatedAirQuality, SimulatedConfig(id="a"), 1)
    assert {r.metric: r.unit for r in air}["co2_ppm"] == "ppm"


async def test_trouble_is_deterministic() -> None:
    actor = SimulatedPlug(SimulatedConfig(id="p", offline_every=5, offline_for=2, crash_every=7))
    await actor.setup()
    outcomes = []
    for _ in range(14):
        try:
            await actor.poll()
            outcomes.append("ok")
        except DeviceUnavailable:
            outcomes.append("down")
        except RuntimeError:
            outcomes.append("crash")
    # Polls 4-5 and 9-10 of each 5 are offline; every 7th crashes (crashes win).
    assert outcomes == [
        "ok",
        "ok",
        "ok",
        "down",
        "down",
        "ok",
        "crash",
        "ok",
        "down",
        "down",
        "ok",
        "ok",
        "ok",
        "crash",
    ]


async def test_the_plug_switches_and_the_state_survives_a_restart(
    actors: ActorNursery, autojump_clock: Any
) -> None:
    sup = actors.spawn(SimulatedPlug, {"id": "p", "crash_every": 5})
    await wait_until(lambda: sup.state is ActorState.RUNNING)
    assert await sup.command("turn_off") == {"is_on": False}
    await wait_until(lambda: sup.health().restarts_total >= 1 and sup.state is ActorState.RUNNING)
    refreshed = await sup.refresh()
    assert {r.metric: r.value for r in refreshed.readings}["is_on"] is False
    assert sup.published_state()[0]["is_on"] is False  # readings and published state alike


async def test_the_thermostat_validates_its_setpoint(
    actors: ActorNursery, autojump_clock: Any
) -> None:
    sup = actors.spawn(SimulatedThermostat, {"id": "t"})
    assert await sup.command("set_setpoint", {"setpoint_c": 23}) == {"setpoint_c": 23.0}
    with pytest.raises(CallFailed, match="between 5 and 35"):
        await sup.command("set_setpoint", {"setpoint_c": 99})


async def test_slow_polls_overrun_on_schedule(actors: ActorNursery, autojump_clock: Any) -> None:
    class Patient(SimulatedAirQuality):
        poll_timeout = 5.0

    sup = actors.spawn(Patient, {"id": "a", "slow_every": 3, "slow_seconds": 2.5})
    await wait_until(lambda: sup.health().polls >= 9)
    assert sup.health().overruns >= 4
