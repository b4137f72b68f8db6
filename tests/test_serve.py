"""``piphi-runtime serve`` as a real process: hypercorn on 127.0.0.1, a real local Core,
SIGTERM with telemetry undelivered, and a restart that delivers it. Real time, bounded."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from runtime._serve import parse_port
from tests.fakecore import FakeCore
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-c", "import sys; from runtime._cli import main; sys.exit(main())"]
SERVE = [*CLI, "serve", "examples.simulated_home:integration"]
DEVICES = 100
TOKEN = "serve-test-token"


@asynccontextmanager
async def runtime_process(env: dict[str, str]) -> AsyncIterator[tuple[trio.Process, str]]:
    args = [*SERVE, "--host", "127.0.0.1", "--port", "0"]
    proc = await trio.lowlevel.open_process(
        args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=ROOT
    )
    try:
        assert proc.stdout is not None
        buffer = b""
        with trio.fail_after(30):
            while b"serving" not in buffer or not buffer.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(4096)
                assert chunk, "the runtime exited before serving"
                buffer += chunk
        url = buffer.decode().split(" on ")[-1].split()[0]
        yield proc, url
    finally:
        if proc.returncode is None:
            proc.kill()
        with trio.move_on_after(10):
            await proc.wait()


async def stop(proc: trio.Process) -> tuple[int, float]:
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    with trio.fail_after(20):
        code = await proc.wait()
    return code, time.monotonic() - started


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


def spooled_ids(state: Path) -> set[str]:
    con = sqlite3.connect(state / "spool.db")
    try:
        rows = con.execute("SELECT payload FROM items").fetchall()
    finally:
        con.close()
    return {json.loads(p).get("telemetry_id") or json.loads(p)["event_id"] for (p,) in rows}


def test_an_invalid_port_is_an_error() -> None:
    assert parse_port(None) == 8000
    assert parse_port("8123") == 8123
    for bad in ("http", "-1", "70000", "80.5"):
        with pytest.raises(ValueError, match="PORT"):
            parse_port(bad)
    result = run_serve([], PORT="eighty")
    assert result.returncode == 2
    assert "PORT must be an integer" in result.stderr


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
        # Core's next request tells the restarted runtime who it is; until then it holds.
        await http.get("/state", headers=headers)
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


def test_a_runtime_that_cannot_start_exits_non_zero(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the state directory should be")
    result = run_serve(["--host", "127.0.0.1", "--port", "0"], PIPHI_STATE_DIR=str(blocker))
    assert result.returncode == 1
    assert "serving" not in result.stdout
    assert "the runtime failed" in result.stderr
    assert "writable" in result.stderr  # the spool error's hint reaches the operator
