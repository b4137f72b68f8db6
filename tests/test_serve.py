"""``piphi-runtime serve`` as a real process: hypercorn on 127.0.0.1, a real local Core,
SIGTERM with telemetry undelivered, and a restart that delivers it. Real time, bounded."""

from __future__ import annotations

import os
import subprocess
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from runtime._settings import parse_port
from runtime.testing import FakeCore
from tests.helpers import wait_until
from tests.reliability._procs import ROOT, SERVE, runtime_process, spooled_ids, stop

DEVICES = 100
TOKEN = "serve-test-token"


def run_serve(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    """``piphi-runtime serve`` run to its end (for the cases that never start serving)."""
    return subprocess.run(
        [*SERVE, *args],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.slow
def test_an_invalid_port_is_an_error() -> None:
    assert parse_port(None) == 8000
    assert parse_port("8123") == 8123
    for bad in ("http", "-1", "70000", "80.5"):
        with pytest.raises(ValueError, match="PORT"):
            parse_port(bad)
    result = run_serve([], PORT="eighty")
    assert result.returncode == 2
    assert "PORT must be an integer" in result.stderr


@pytest.mark.slow
async def test_sigterm_spools_and_a_restart_delivers(tmp_path: Path, nursery: trio.Nursery) -> None:
    core = FakeCore()
    await nursery.start(core.serve)
    state = tmp_path / "state"
    env = {
        **os.environ,
        "PIPHI_CORE_BASE_URL": core.url,
        "PIPHI_STATE_DIR": str(state),
        "PIPHI_CONFIG_SNAPSHOT_PATH": str(tmp_path / "no-mount.json"),
        "PIPHI_LOG_LEVEL": "WARNING",
    }
    kinds = ["thermostat", "plug", "air_quality"]
    configs: list[dict[str, Any]] = [
        {"id": f"dev-{i}", "configId": f"uuid-{i}", "device_type": kinds[i % 3]}
        for i in range(DEVICES)
    ]
    headers = {"X-Container-Id": "ctr-serve", "X-PiPhi-Integration-Token": TOKEN}

    async with runtime_process(env) as (proc, url), httpx.AsyncClient(base_url=url) as http:
        reply = await http.post(
            "/config/sync", json={"generation": 1, "configs": configs}, headers=headers
        )
        assert reply.status_code == 200
        assert len(reply.json()["active_config_ids"]) == DEVICES
        await wait_until(lambda: len(core.telemetry()) >= DEVICES, timeout=20, step=0.1)
        assert {r.container_id for r in core.received} == {"ctr-serve"}
        assert {r.token for r in core.received} == {TOKEN}
        await core.down()
        await trio.sleep(2.5)  # two more polls per device, now undeliverable
        diagnostics = (await http.get("/diagnostics")).json()["diagnostics"]
        assert diagnostics["delivery"]["link"]["state"] == "down"
        code, took = await stop(proc)
    assert code == 0
    assert took < 10, f"shutdown took {took:.1f} s"
    pending = spooled_ids(state)
    assert len(pending) >= DEVICES, "undelivered telemetry must be in the spool"

    await core.up()
    async with runtime_process(env) as (proc, url), httpx.AsyncClient(base_url=url) as http:
        # Core's next snapshot tells the restarted runtime who it is (adopted mode: only an
        # applied snapshot teaches auth); until then it holds what it spooled.
        resync = {"generation": 2, "configs": configs}
        assert (await http.post("/config/sync", json=resync, headers=headers)).status_code == 200
        health = (await http.get("/health")).json()
        assert health["runtime"]["devices"] == DEVICES, "the devices come back from our copy"
        await wait_until(
            lambda: pending <= {b.get("telemetry_id") or b.get("event_id") for b in _bodies(core)},
            timeout=30,
            step=0.1,
        )
        code, _ = await stop(proc)
    assert code == 0


def _bodies(core: FakeCore) -> list[dict[str, Any]]:
    return [r.body for r in core.received]


@pytest.mark.slow
def test_a_runtime_that_cannot_start_exits_non_zero(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the state directory should be")
    result = run_serve(["--host", "127.0.0.1", "--port", "0"], PIPHI_STATE_DIR=str(blocker))
    assert result.returncode == 1
    assert "serving" not in result.stdout
    assert "the runtime failed" in result.stderr
    assert "writable" in result.stderr  # the spool error's hint reaches the operator


@pytest.mark.slow
def test_an_invalid_durability_is_an_error() -> None:
    result = run_serve(["--port", "0"], PIPHI_DURABILITY="fsync-always")
    assert result.returncode == 2
    assert "PIPHI_DURABILITY must be one of memory, write_ahead" in result.stderr
    result = run_serve(["--port", "0", "--durability", "fsync-always"])
    assert result.returncode == 2
    assert "--durability" in result.stderr


@pytest.mark.parametrize(
    ("flag", "variable", "chosen"),
    [
        (None, None, "memory"),
        (None, "write_ahead", "write_ahead"),
        ("write_ahead", None, "write_ahead"),
        ("memory", "write_ahead", "memory"),  # the flag wins
    ],
)
async def test_durability_comes_from_the_flag_or_the_environment(
    flag: str | None, variable: str | None, chosen: str, tmp_path: Path, nursery: trio.Nursery
) -> None:
    from examples.simulated_home import integration
    from runtime._serve import serve

    core = FakeCore()
    await nursery.start(core.serve)
    env = {
        "PIPHI_CORE_BASE_URL": core.url,
        "PIPHI_STATE_DIR": str(tmp_path / "state"),
        "PIPHI_CONFIG_SNAPSHOT_PATH": str(tmp_path / "no-mount.json"),
        "PIPHI_INTEGRATION_INTERNAL_TOKEN": TOKEN,
    }
    if variable:
        env["PIPHI_DURABILITY"] = variable
    async with trio.open_nursery() as inner:
        urls = await inner.start(
            partial(serve, integration, env=env, host="127.0.0.1", port=0, durability=flag)
        )
        headers = {"X-PiPhi-Integration-Token": TOKEN}
        async with httpx.AsyncClient(base_url=urls[0], headers=headers) as http:
            diagnostics = (await http.get("/diagnostics")).json()["diagnostics"]
        inner.cancel_scope.cancel()
    assert diagnostics["delivery"]["durability"] == chosen
