"""``/health`` and ``/diagnostics``: every moment is ISO-8601 UTC."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio

import runtime._outbox
from runtime.testing import FakeCore
from tests.served import env_for, serve


def aware(text: object) -> datetime:
    assert isinstance(text, str), text
    moment = datetime.fromisoformat(text)
    assert moment.utcoffset() is not None, text
    return moment


async def test_link_times_are_iso_8601_utc(
    core: FakeCore, tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    env = env_for(tmp_path, core, PIPHI_CONTAINER_ID="ctr-1")
    async with serve(core, env) as served:
        await core.down()
        await served.post("/config", {"id": "p1"})
        await trio.sleep(5)
        _, body = await served.get("/diagnostics")
        runtime, delivery = body["diagnostics"]["runtime"], body["diagnostics"]["delivery"]
        assert runtime["core_link"]["state"] == "down"
        aware(runtime["core_link"]["since"])
        aware(runtime["core_link"]["last_error"]["at"])
        aware(delivery["link"]["since"])
        aware(delivery["link"]["last_error"]["at"])
        _, health = await served.get("/health")
        aware(health["runtime"]["core_link"]["last_error"]["at"])
        assert health["status"] == "degraded"
        assert [c["code"] for c in health["runtime"]["concerns"]] == ["core_link_down"]


async def test_an_aging_backlog_shows_in_health_diagnostics_and_metrics(
    core: FakeCore, tmp_path: Path, autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    base = time.time()  # the outbox stamps items with a wall clock that follows trio's here
    shim = SimpleNamespace(time=lambda: base + trio.current_time(), monotonic=time.monotonic)
    monkeypatch.setattr(runtime._outbox, "time", shim)
    env = env_for(tmp_path, core, PIPHI_CONTAINER_ID="ctr-1")
    async with serve(core, env) as served:
        await core.down()
        await served.post("/config", {"id": "p1"})
        await trio.sleep(40)
        _, health = await served.get("/health")
        _, body = await served.get("/diagnostics")
        response = await served.client.get("/metrics")
        text = await response.get_data(as_text=True)
    assert health["status"] == "degraded"
    assert "delivery_backlog" in [c["code"] for c in health["runtime"]["concerns"]]
    assert 30 < body["diagnostics"]["delivery"]["backlog_age"] <= 41
    (line,) = [
        ln for ln in text.splitlines() if ln.startswith("piphi_delivery_backlog_age_seconds")
    ]
    assert 30 < float(line.split()[-1]) <= 41
