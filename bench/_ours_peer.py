"""Our side of bench/compare_piphi.py: the same simulated device as bench/_kit_peer.py,
written as a ``DeviceActor`` and served the way our README says::

    PIPHI_CORE_BASE_URL=http://127.0.0.1:PORT piphi-runtime serve bench._ours_peer:integration

Each reading is ``{"temperature_c": ..., "seq": n}`` with ``seq`` 1, 2, 3... per
device_id for the life of the process, so the sink can count gaps, exactly as the kit
peer does. Generation happens in ``poll()``; the runtime schedules it at the configured
fixed rate and delivers through its outbox.

Bench instrumentation, outside the runtime's path and the same as the kit peer's: stdin
takes one command per line, read by a thread so it is answered even while the trio
thread is busy:

- ``counters``: print ``{"generated": n, "devices": d}`` as one JSON line;
- ``pause``: stop generating readings for good (the outbox goes on delivering), then
  print the counters;
- end of input: exit at once (the bench is done with us, or gone).
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
from typing import Any

from runtime import DeviceActor, Integration, PollInterval, Reading, RuntimeConfig


class BenchConfig(RuntimeConfig):
    poll_interval_seconds: PollInterval = 1.0
    alias: str | None = None


class _Counters:
    generated = 0
    generating = True


counters = _Counters()
_seq: dict[str, int] = {}  # device_id -> last seq; never reused in this process


class BenchDevice(DeviceActor[BenchConfig]):
    async def setup(self) -> None:
        self._device_id = self.config.identity.device_id
        self._temperature = 20.0 + 5 * random.Random(self._device_id).random()

    async def poll(self) -> list[Reading]:
        if not counters.generating:
            return []
        self._temperature += random.uniform(-0.1, 0.1)
        seq = _seq.get(self._device_id, 0) + 1
        _seq[self._device_id] = seq
        counters.generated += 1
        return [Reading("temperature_c", round(self._temperature, 2), "C"), Reading("seq", seq)]


integration = Integration(
    id="bench-ours-peer",
    name="Bench peer (piphi-runtime)",
    version="0.1.0-bench",
    actor=BenchDevice,
)


def _counters_line() -> str:
    body: dict[str, Any] = {"generated": counters.generated, "devices": len(_seq)}
    return json.dumps(body)


def _control() -> None:
    for line in sys.stdin:
        command = line.strip()
        if command == "pause":
            counters.generating = False
        if command in ("pause", "counters"):
            print(_counters_line(), flush=True)
    os._exit(0)


if os.environ.get("BENCH_PEER_CONTROL") == "1":
    threading.Thread(target=_control, name="bench-control", daemon=True).start()
