"""rtl_433 radio sensors through a PiPhi MQTT source stream, one actor per sensor.

A bridge (rtl_433 with its MQTT output, or PiPhi's source service) publishes every packet
to ``piphi/sources/rtl433/packets``. The integration declares that stream once as a shared
source: the runtime holds one broker connection for every sensor and routes each packet
by its ``device_hint`` to the sensor's ``actors.source_device.SourceDeviceActor``.
Packets of sensors no config names are offered by ``/discover``. The broker is
``PIPHI_MQTT_URL`` (default ``mqtt://127.0.0.1:1883``). ``fake_rtl433()`` publishes
realistic packets for two sensors, for trying it without a radio::

    PIPHI_MQTT_URL=mqtt://127.0.0.1:1883 piphi-runtime serve examples.rtl433_bridge:integration
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.source_device import SourceDeviceActor
from runtime import Integration, MqttSource

integration = Integration(
    id="rtl433-bridge",
    name="rtl_433 Bridge",
    version="0.1.0",
    actor=SourceDeviceActor,
    sources=[MqttSource(topics=["piphi/sources/rtl433/packets"], name="rtl433")],
    preset="sidecar-worker",
    domain="climate",
    description="433 MHz sensors heard by rtl_433, from PiPhi's MQTT source stream.",
)
app = integration.app()

SENSORS = [
    {"model": "Acurite-Tower", "id": 1234, "channel": "A"},
    {"model": "LaCrosse-TX141THBv2", "id": 77, "channel": "1"},
]


def sensor_config(config_id: str, hint: dict[str, Any]) -> dict[str, Any]:
    """The device config Core would hold for one sensor."""
    return {
        "id": config_id,
        "source": "rtl433",
        "device_hint": hint,
        "metrics": {
            "temperature_C": {"metric": "temperature_c", "unit": "C"},
            "humidity": {"metric": "humidity", "unit": "%"},
            "battery_ok": "battery_ok",
        },
        "silence_seconds": 120,
    }


def envelope(hint: dict[str, Any], n: int) -> str:
    """One packet as the source bridge publishes it."""
    return json.dumps(
        {
            "source": "rtl433",
            "received_at": datetime.now(UTC).isoformat(),
            "model": hint["model"],
            "device_hint": hint,
            "packet": {
                "model": hint["model"],
                "id": hint["id"],
                "channel": hint["channel"],
                "temperature_C": round(20.0 + (n % 10) / 10, 1),
                "humidity": 45 + n % 5,
                "battery_ok": 1,
            },
            "metadata": {"freq": 433.92, "rssi": -7.1},
        }
    )


async def fake_rtl433(host: str, port: int, *, every: float = 1.0, count: int = 1_000_000) -> None:
    """Publish a packet for each of ``SENSORS`` every ``every`` seconds."""
    from moat.lib.mqtt.async_client import AsyncMQTTClient

    async with AsyncMQTTClient(host, port) as client:
        for n in range(count):
            for hint in SENSORS:
                await client.publish("piphi/sources/rtl433/packets", envelope(hint, n))
            await trio.sleep(every)
