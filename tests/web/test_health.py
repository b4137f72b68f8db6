"""``/health`` and ``/diagnostics``: every moment is ISO-8601 UTC."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import trio

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
