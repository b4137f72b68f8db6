"""A fleet whose every reading says which process made it and its place in the device's
sequence, so a test can find each reading that never reached Core, and when it was made.

``piphi-runtime serve tests.reliability.seqfleet:integration``: each config is one device
reporting ``Reading("seq", n)`` (1, 2, 3, ... per device and process) and
``Reading("run", pid)`` every ``poll_interval_seconds``.
"""

from __future__ import annotations

import os

from runtime import DeviceActor, Integration, Reading, RuntimeConfig
from runtime._config import PollInterval


class SeqConfig(RuntimeConfig):
    poll_interval_seconds: PollInterval = 0.1


class Seq(DeviceActor[SeqConfig]):
    async def setup(self) -> None:
        self.n = getattr(self, "n", 0)

    async def poll(self) -> list[Reading]:
        self.n += 1
        return [Reading("seq", self.n), Reading("run", os.getpid())]


integration = Integration(
    id="seq-fleet",
    name="Sequence-numbered fleet",
    version="1.0.0",
    actor=Seq,
    description="Test devices whose readings carry a per-device sequence number.",
)
