"""The process's memory (issue 15, item 7): RSS and its trend in /health and /diagnostics,
and a concern past a configurable limit."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio

from runtime import Integration
from runtime._process import MB, read_rss
from runtime._settings import Settings
from runtime._web import RUNTIME_KEY
from runtime.lowlevel import MemoryMonitor, open_runtime
from runtime.testing import FakeCore
from tests.helpers import Probe


def test_rss_is_read_from_proc(tmp_path: Path) -> None:
    found = read_rss()
    assert found is not None, "Linux has /proc/self/status"
    rss, peak = found
    assert 10 * MB < rss <= peak
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n")
    assert read_rss(status) == (100 * MB, 200 * MB)
    status.write_text("Name:\tpython\n")
    assert read_rss(status) is None
    assert read_rss(tmp_path / "missing") is None


async def test_a_steady_climb_shows_as_a_trend_and_a_concern_past_the_limit(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    rss = [60 * MB]

    def reader() -> tuple[int, int]:
        rss[0] += 5 * MB  # a leak of 5 MB per sample (every 10 s): 30 MB a minute
        return rss[0], rss[0]

    monitor = MemoryMonitor(limit_mb=300, interval=10.0, reader=reader)
    assert monitor.to_dict()["rss_mb"] is None and monitor.concerns() == []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(monitor.run)
        await trio.sleep(300)
        figures, concerns = monitor.to_dict(), monitor.concerns()
        nursery.cancel_scope.cancel()
    assert figures["rss_mb"] == pytest.approx(212, abs=6)
    assert figures["trend_mb_per_min"] == pytest.approx(30.0, rel=0.01)
    assert figures["limit_mb"] == 300
    assert concerns == []
    monitor = MemoryMonitor(limit_mb=100, interval=10.0, reader=reader)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(monitor.run)
        await trio.sleep(60)
        (concern,) = monitor.concerns()
        nursery.cancel_scope.cancel()
    assert concern.code == "memory_high"
    assert "rising 30.0 MB/min" in concern.message
    assert "PIPHI_MEMORY_LIMIT_MB" in concern.hint
    over = [r for r in caplog.records if "over the limit" in r.getMessage()]
    assert len(over) == 1 and over[0].levelno == logging.WARNING, "one warning per episode"


def test_the_limit_comes_from_the_environment() -> None:
    assert Settings.from_env({}).memory_limit_mb == 512
    assert Settings.from_env({"PIPHI_MEMORY_LIMIT_MB": "64"}).memory_limit_mb == 64
    assert Settings.from_env({"PIPHI_MEMORY_LIMIT_MB": "0"}).memory_limit_mb is None
    with pytest.raises(ValueError, match="PIPHI_MEMORY_LIMIT_MB"):
        Settings.from_env({"PIPHI_MEMORY_LIMIT_MB": "lots"})


async def test_health_shows_memory_and_degrades_past_the_limit(
    core: FakeCore, tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    integration = Integration(id="mem", name="Mem", version="1", actor=Probe)
    env = {
        "PIPHI_CORE_BASE_URL": core.url,
        "PIPHI_STATE_DIR": str(tmp_path / "state"),
        "PIPHI_CONFIG_SNAPSHOT_PATH": str(tmp_path / "none.json"),
        "PIPHI_MEMORY_LIMIT_MB": "1",  # any Python process is over a megabyte
    }
    app = integration.app()
    async with open_runtime(integration, env=env) as rt:
        app.extensions[RUNTIME_KEY] = rt
        async with app.test_app() as test_app:
            await trio.sleep(1)
            health = await (await test_app.test_client().get("/health")).get_json()
            diagnostics = await (await test_app.test_client().get("/diagnostics")).get_json()
    assert health["status"] == "degraded"
    assert [c["code"] for c in health["runtime"]["concerns"]] == ["memory_high"]
    memory = health["runtime"]["memory"]
    assert memory["rss_mb"] > 10 and memory["limit_mb"] == 1
    assert diagnostics["diagnostics"]["runtime"]["memory"]["rss_mb"] > 10
