"""``POST /command`` outcomes that may have happened (issue 13 §2): a command cut short
after it may have reached the device says ``outcome: "unknown"`` and ``may_have_run``,
and is ``retryable`` only when declared idempotent. On trio's virtual clock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from runtime import DeviceActor, DeviceUnavailable, Integration, Reading, RuntimeConfig, command
from runtime.testing import FakeCore
from tests.served import Served, env_for, serve


class ValveConfig(RuntimeConfig):
    poll_interval_seconds: float = 5.0
    setup_fails: bool = False


class Valve(DeviceActor[ValveConfig]):
    """Commands that fail in every way a vendor call can; ``runs`` counts handler runs."""

    runs: dict[str, int] = {}  # noqa: RUF012 - a test's shared tally

    async def setup(self) -> None:
        if self.config.setup_fails:
            raise RuntimeError("boom")

    async def poll(self) -> list[Reading]:
        return [Reading("open", False)]

    def _ran(self, name: str) -> None:
        type(self).runs[name] = type(self).runs.get(name, 0) + 1

    @command("open", timeout=2)
    async def open(self, args: Mapping[str, Any]) -> dict[str, bool]:
        self._ran("open")
        await trio.sleep(10)  # sent; the answer never comes
        return {"open": True}

    @command("set_level", timeout=2, idempotent=True)
    async def set_level(self, args: Mapping[str, Any]) -> dict[str, bool]:
        self._ran("set_level")
        await trio.sleep(10)
        return {"ok": True}

    @command("reset")
    async def reset(self, args: Mapping[str, Any]) -> None:
        self._ran("reset")
        raise ConnectionResetError("connection reset by peer")

    @command("read", idempotent=True)
    async def read(self, args: Mapping[str, Any]) -> None:
        self._ran("read")
        try:
            raise httpx.ReadTimeout("timed out reading the answer")
        except httpx.ReadTimeout as exc:
            raise DeviceUnavailable("valve stopped answering") from exc

    @command("refused", idempotent=True)
    async def refused(self, args: Mapping[str, Any]) -> None:
        raise ConnectionRefusedError("connection refused")

    @command("no_route")
    async def no_route(self, args: Mapping[str, Any]) -> None:
        raise httpx.ConnectError("no route to host")

    @command("jammed")
    async def jammed(self, args: Mapping[str, Any]) -> None:
        raise ValueError("the valve is jammed")


VALVES = Integration(id="valves", name="Valves", version="1.0.0", actor=Valve)


@pytest.fixture
async def valves(core: FakeCore, tmp_path: Path) -> AsyncIterator[Served]:
    Valve.runs = {}
    async with serve(core, env_for(tmp_path, core), VALVES) as served:
        await served.post("/config", {"id": "v1"})
        await served.post("/config", {"id": "broken", "setup_fails": True})
        await trio.sleep(1)
        yield served


def outcome(reply: Mapping[str, Any]) -> tuple[Any, ...]:
    return (reply["ok"], reply["outcome"], reply.get("may_have_run"), reply["retryable"])


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("open", (False, "unknown", True, False)),  # timed out while running
        ("set_level", (False, "unknown", True, True)),  # the same, declared idempotent
        ("reset", (False, "unknown", True, False)),  # connection lost mid-exchange
        ("read", (False, "unknown", True, True)),  # DeviceUnavailable from a read timeout
        ("refused", (False, "failed", None, False)),  # never connected: it did not run
        ("no_route", (False, "failed", None, False)),
        ("jammed", (False, "failed", None, False)),  # the device refused it
    ],
)
async def test_what_became_of_a_command(
    valves: Served, autojump_clock: trio.abc.Clock, name: str, expected: tuple[Any, ...]
) -> None:
    status, reply = await valves.post("/command", {"command": name, "config_id": "v1"})
    assert status == 502
    assert outcome(reply) == expected, reply


async def test_a_command_that_never_started_did_not_run(
    valves: Served, autojump_clock: trio.abc.Clock
) -> None:
    status, reply = await valves.post("/command", {"command": "open", "config_id": "broken"})
    assert (status, outcome(reply)) == (502, (False, "not_run", False, True))
    assert reply["error"]["code"] == "actor_not_ready"
    status, reply = await valves.post("/command", {"command": "refused", "config_id": "v1"})
    assert (status, reply["outcome"]) == (502, "failed")
    assert "may_have_run" not in reply


async def test_an_unknown_outcome_is_kept_unless_the_command_is_idempotent(
    valves: Served, autojump_clock: trio.abc.Clock
) -> None:
    """Not idempotent: the key replays the unknown outcome and never runs it again.
    Idempotent: retryable, so the same key runs it again."""
    for name in ("open", "set_level"):
        headers = {"X-PiPhi-Idempotency-Key": f"key-{name}"}
        body = {"command": name, "config_id": "v1"}
        await valves.post("/command", body, headers=headers)
        status, again = await valves.post("/command", body, headers=headers)
        assert again["outcome"] == "unknown"
        if name == "open":
            assert (status, again["replayed"], again["may_have_run"]) == (502, True, True)
        else:
            assert again["replayed"] is False
    assert Valve.runs == {"open": 1, "set_level": 2}
