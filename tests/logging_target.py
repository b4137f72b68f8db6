"""An integration whose device leaks its key every way a real one could (for test_logs)."""

from __future__ import annotations

import logging
import logging.config
import os

import httpx

from runtime import DeviceActor, Integration, Reading, RuntimeConfig


class LeakyConfig(RuntimeConfig):
    api_key: str  # secret by its name
    poll_interval_seconds: float = 1.0
    own_logging: bool = False


class Leaky(DeviceActor[LeakyConfig]):
    """A deCONZ-style device: its key is part of every URL."""

    async def setup(self) -> None:
        if self.config.own_logging:  # the author configures logging after start-up
            logging.config.dictConfig(
                {
                    "version": 1,
                    "disable_existing_loggers": False,
                    "handlers": {"plain": {"class": "logging.StreamHandler"}},
                    "root": {"level": "DEBUG", "handlers": ["plain"]},
                }
            )

    async def poll(self) -> list[Reading]:
        key = self.config.api_key
        url = f"{os.environ['PIPHI_CORE_BASE_URL']}/api/{key}/sensors"
        async with httpx.AsyncClient() as client:
            await client.get(url)  # httpx logs the URL (INFO), Core answers 404
        logging.getLogger(__name__).warning("by mistake: %s", key)
        logging.getLogger("hypercorn.error").warning("hypercorn saw %s", key)
        self.log.warning("first line\nforged: %s", "INFO runtime.supervisor everything is fine")
        raise RuntimeError(f"GET {url} failed")  # logged with its traceback


integration = Integration(id="leaky", name="Leaky", version="1.0.0", actor=Leaky)
app = integration.app()
