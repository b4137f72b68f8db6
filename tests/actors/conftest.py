"""What the MQTT tests share: a real mosquitto on 127.0.0.1 and one connect attempt."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import stamina

from .broker import Broker, running_broker


@pytest.fixture
def one_connect_attempt() -> Iterator[None]:
    """stamina would retry a refused connect for up to 45 s, logging through the
    last-resort handler; the backoff under test (the supervisor's, the hub's) is the retry."""
    with stamina.set_testing(True):
        yield


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    """A mosquitto started for the test and always stopped (``broker.running_broker``)."""
    async with running_broker(tmp_path) as running:
        yield running
