"""A PiPhi integration of simulated home devices: thermostats, plugs, air-quality sensors.

Each config chooses its actor by ``device_type`` (``thermostat``, ``plug`` or
``air_quality``; thermostat when absent). Serve it the way Core runs integrations::

    PORT=8000 piphi-runtime serve examples.simulated_home:integration
    # or: hypercorn --worker-class trio --bind 127.0.0.1:8000 examples.simulated_home:app
"""

from __future__ import annotations

from actors.simulated import SIMULATED_ACTORS, SimulatedThermostat
from runtime import Integration

integration = Integration(
    id="simulated-home",
    name="Simulated Home",
    version="0.1.0",
    actor=SimulatedThermostat,
    actors=SIMULATED_ACTORS,
    select_field="device_type",
    domain="climate",
    description="Simulated thermostats, plugs and air-quality sensors for demos and tests.",
)

app = integration.app()
