"""The process's own memory: resident size (RSS), its trend, and a warning past a limit.

``MemoryMonitor`` reads ``VmRSS`` and ``VmHWM`` from ``/proc/self/status`` (about 20 us)
every ``interval`` seconds in a task of its own, never on a request's or a poll's path,
and keeps a short history to tell a leak (a steady climb) from a plateau. ``/health`` and
``/diagnostics`` show ``to_dict()``; past ``limit_mb`` it is a ``Concern`` (``/health``
degraded) and one warning in the log per episode. Where ``/proc`` is missing (not Linux)
the figures are None and nothing is ever a concern.

The limit comes from ``PIPHI_MEMORY_LIMIT_MB`` (default 512; 0 turns the warning off).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

from . import _offload
from ._health import Concern

__all__ = ["MEMORY_LIMIT_ENV", "MemoryMonitor", "read_rss"]

log = logging.getLogger("runtime.process")

MEMORY_LIMIT_ENV = "PIPHI_MEMORY_LIMIT_MB"
DEFAULT_LIMIT_MB = 512.0
MB = 1024 * 1024

_STATUS = Path("/proc/self/status")


def read_rss(status: Path = _STATUS) -> tuple[int, int] | None:
    """``(rss, peak_rss)`` in bytes from a ``/proc/<pid>/status`` file, or None."""
    try:
        text = status.read_text()
    except OSError:
        return None
    found: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            parts = rest.split()
            if parts and parts[0].isdigit():
                found[name] = int(parts[0]) * 1024  # the kernel says kB
    if "VmRSS" not in found:
        return None
    return found["VmRSS"], found.get("VmHWM", found["VmRSS"])


class MemoryMonitor:
    """Samples RSS; ``to_dict()`` and ``concerns()`` read the last sample, never disk."""

    def __init__(
        self,
        *,
        limit_mb: float | None = DEFAULT_LIMIT_MB,
        interval: float = 10.0,
        history: int = 60,
        reader: Callable[[], tuple[int, int] | None] = read_rss,
    ) -> None:
        if limit_mb is not None and not limit_mb > 0:
            limit_mb = None
        self.limit_mb = limit_mb
        self.interval = interval
        self._reader = reader
        # (trio time, rss bytes): ``history`` samples, ten minutes at the default interval.
        self._samples: deque[tuple[float, int]] = deque(maxlen=history)
        self._peak: int | None = None
        self._sampled_at: float | None = None
        self._over = False

    async def sample(self) -> None:
        """Read RSS now (a file read, so in a worker thread) and note it."""
        found = await _offload.offload(self._reader)
        if found is None:
            return
        rss, peak = found
        self._samples.append((trio.current_time(), rss))
        self._peak = peak
        self._sampled_at = time.time()
        self._warn(rss)

    async def run(self) -> None:
        """Sample every ``interval`` seconds until cancelled."""
        while True:
            await self.sample()
            await trio.sleep(self.interval)

    @property
    def rss(self) -> int | None:
        return self._samples[-1][1] if self._samples else None

    def trend_mb_per_min(self) -> float | None:
        """The least-squares slope of RSS over the samples kept, in MB per minute."""
        samples = self._samples
        if len(samples) < 3:
            return None
        t0 = samples[0][0]
        xs = [(t - t0) / 60.0 for t, _ in samples]
        ys = [rss / MB for _, rss in samples]
        mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
        spread = sum((x - mean_x) ** 2 for x in xs)
        if spread == 0:
            return None
        return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread

    def to_dict(self) -> dict[str, Any]:
        rss = self.rss
        trend = self.trend_mb_per_min()
        span = self._samples[-1][0] - self._samples[0][0] if len(self._samples) > 1 else 0.0
        return {
            "rss_mb": None if rss is None else round(rss / MB, 1),
            "peak_rss_mb": None if self._peak is None else round(self._peak / MB, 1),
            "trend_mb_per_min": None if trend is None else round(trend, 2),
            "trend_window_s": round(span, 1),
            "limit_mb": self.limit_mb,
            "sampled_at": None if self._sampled_at is None else _iso(self._sampled_at),
        }

    def concerns(self) -> list[Concern]:
        rss, limit = self.rss, self.limit_mb
        if rss is None or limit is None or rss <= limit * MB:
            return []
        trend = self.trend_mb_per_min()
        rising = f", rising {trend:.1f} MB/min" if trend is not None and trend > 0.5 else ""
        return [
            Concern(
                "memory_high",
                f"the runtime uses {rss / MB:.0f} MB of memory (limit {limit:g} MB{rising})",
                "A steady rise points at a leak, often in an actor holding on to data between "
                "polls: compare actors in /diagnostics, or restart the runtime. Raise "
                f"{MEMORY_LIMIT_ENV} if this size is expected.",
            )
        ]

    def _warn(self, rss: int) -> None:
        limit = self.limit_mb
        over = limit is not None and rss > limit * MB
        if over and not self._over:
            log.warning(
                "memory: RSS %.0f MB is over the limit of %g MB (%s); trend %s MB/min",
                rss / MB,
                limit,
                MEMORY_LIMIT_ENV,
                self.to_dict()["trend_mb_per_min"],
            )
        elif self._over and not over:
            log.info("memory: RSS %.0f MB is back under the limit", rss / MB)
        self._over = over


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat()
