"""Simulated devices: a thermostat, a plug and an air-quality sensor.

Readings are a pure function of (seed, device id, poll number), so two runs with the
same configs produce the same series. Trouble is configurable and just as deterministic:
offline spells (``DeviceUnavailable``), crashes (an unexpected exception) and slow polls.
Used by the demo, the tests and the benchmarks; cheap enough to run 50k of them.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from typing import Any, ClassVar

import trio
from pydantic import Field

from runtime import DeviceActor, DeviceUnavailable, PollInterval, Reading, RuntimeConfig, command

__all__ = [
    "SIMULATED_ACTORS",
    "SimulatedAirQuality",
    "SimulatedConfig",
    "SimulatedPlug",
    "SimulatedThermostat",
]

_MASK = (1 << 64) - 1


def _noise(seed: int, tick: int, channel: int) -> float:
    """A deterministic value in [-1, 1) from (seed, tick, channel): splitmix64 finaliser."""
    z = (seed + tick * 0x9E3779B97F4A7C15 + channel * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    z ^= z >> 31
    return (z >> 11) / float(1 << 52) - 1.0


class SimulatedConfig(RuntimeConfig):
    """A simulated device. The trouble fields are counted in polls (0 disables each)."""

    poll_interval_seconds: PollInterval = 1.0
    seed: int = 0
    offline_every: int = Field(default=0, ge=0)
    """Out of every this many polls..."""
    offline_for: int = Field(default=0, ge=0)
    """...the last this many find the device offline."""
    crash_every: int = Field(default=0, ge=0)
    """Every this many polls raises an unexpected exception."""
    slow_every: int = Field(default=0, ge=0)
    """Every this many polls takes ``slow_seconds``."""
    slow_seconds: float = Field(default=0.0, ge=0, allow_inf_nan=False)


class _Simulated(DeviceActor[SimulatedConfig]):
    kind: ClassVar[str]

    async def setup(self) -> None:
        config = self.config
        self._seed = (zlib.crc32(config.identity.device_id.encode()) << 32) ^ config.seed
        self._tick = getattr(self, "_tick", 0)  # survives restarts, as a real counter would

    async def poll(self) -> list[Reading]:
        self._tick += 1
        tick, config = self._tick, self.config
        if config.crash_every and tick % config.crash_every == 0:
            raise RuntimeError(f"simulated crash (every {config.crash_every} polls)")
        every = config.offline_every
        if every and (tick - 1) % every >= every - config.offline_for:
            raise DeviceUnavailable(f"simulated offline spell (poll {tick})")
        if config.slow_every and tick % config.slow_every == 0:
            await trio.sleep(config.slow_seconds)
        return self.read(tick)

    def read(self, tick: int) -> list[Reading]:
        raise NotImplementedError


class SimulatedThermostat(_Simulated):
    kind = "thermostat"

    async def setup(self) -> None:
        await super().setup()
        self.setpoint_c = getattr(self, "setpoint_c", 21.0)

    def read(self, tick: int) -> list[Reading]:
        temp = 20.0 + 2.0 * math.sin(tick * math.tau / 600) + 0.3 * _noise(self._seed, tick, 1)
        return [
            Reading("temperature_c", round(temp, 2), "C"),
            Reading("humidity_pct", round(45.0 + 5.0 * _noise(self._seed, tick, 2), 1), "%"),
            Reading("setpoint_c", self.setpoint_c, "C"),
            Reading("hvac_action", "heating" if temp < self.setpoint_c else "idle"),
        ]

    @command("set_setpoint", description="Set the target temperature in C (5..35).")
    async def set_setpoint(self, args: Mapping[str, Any]) -> dict[str, Any]:
        value = args.get("setpoint_c")
        if not isinstance(value, (int, float)) or not 5 <= value <= 35:
            raise ValueError(f"setpoint_c must be a number between 5 and 35, got {value!r}")
        self.setpoint_c = float(value)
        self.publish_state({"setpoint_c": self.setpoint_c})
        return {"setpoint_c": self.setpoint_c}


class SimulatedPlug(_Simulated):
    kind = "plug"

    async def setup(self) -> None:
        await super().setup()
        self.is_on = getattr(self, "is_on", True)
        self.energy_kwh = getattr(self, "energy_kwh", 0.0)

    def read(self, tick: int) -> list[Reading]:
        power = 45.0 + 8.0 * _noise(self._seed, tick, 1) if self.is_on else 0.0
        self.energy_kwh += power * self.config.poll_interval_seconds / 3_600_000
        return [
            Reading("is_on", self.is_on),
            Reading("current_power_w", round(power, 1), "W"),
            Reading("energy_kwh", round(self.energy_kwh, 6), "kWh"),
        ]

    @command("turn_on")
    async def turn_on(self, args: Mapping[str, Any]) -> dict[str, Any]:
        return self._switch(True)

    @command("turn_off")
    async def turn_off(self, args: Mapping[str, Any]) -> dict[str, Any]:
        return self._switch(False)

    def _switch(self, on: bool) -> dict[str, Any]:
        self.is_on = on
        self.publish_state({"is_on": on})
        return {"is_on": on}


class SimulatedAirQuality(_Simulated):
    kind = "air_quality"

    def read(self, tick: int) -> list[Reading]:
        seed = self._seed
        return [
            Reading("pm2_5", round(8.0 + 4.0 * (1 + _noise(seed, tick, 1)), 1), "ug/m3"),
            Reading(
                "co2_ppm",
                round(
                    600 + 150 * (1 + math.sin(tick * math.tau / 900)) + 20 * _noise(seed, tick, 2)
                ),
                "ppm",
            ),
            Reading("voc_index", round(100 + 30 * _noise(seed, tick, 3))),
        ]


SIMULATED_ACTORS: Mapping[str, type[_Simulated]] = {
    cls.kind: cls for cls in (SimulatedThermostat, SimulatedPlug, SimulatedAirQuality)
}
