"""Logs never leak, whoever configures logging and owns the process; and people can read
them: one format (or JSON lines), httpx's per-request lines off unless at DEBUG."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from runtime.testing import FakeCore
from tests.helpers import wait_until
from tests.reliability._procs import ROOT

pytestmark = pytest.mark.slow  # a real process: make test runs it, -m "not slow" skips it

KEY = "deconz-key-0123456789ABCDEF"
SHORT_PIN = "73"
HEADERS = {"X-Container-Id": "ctr-logs", "X-PiPhi-Integration-Token": "logs-token-XYZ"}


def environment(core: FakeCore, state: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PIPHI_CORE_BASE_URL": core.url,
        "PIPHI_STATE_DIR": str(state),
        "PIPHI_CONFIG_SNAPSHOT_PATH": str(state / "no-mount.json"),
        "PIPHI_CONTAINER_ID": "ctr-logs",
        "PIPHI_INTEGRATION_INTERNAL_TOKEN": "logs-token-XYZ",
        **extra,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def run(command: list[str], env: dict[str, str], port: int, config: dict[str, object]) -> str:
    """Start ``command`` (serving on ``port``), push ``config``, let it poll, stop it:
    its whole stderr."""
    log = Path(env["PIPHI_STATE_DIR"]) / "stderr.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as stderr:
        proc = await trio.lowlevel.open_process(
            command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr
        )
    try:
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=10) as http:
            with trio.fail_after(30):
                while True:
                    try:
                        if (await http.get("/health")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await trio.sleep(0.2)
            snapshot = {"generation": 1, "configs": [{"id": "hub-1", **config}]}
            assert (await http.post("/config/sync", json=snapshot)).status_code == 200
            # Two failed polls, each leaking every way it can, the first logged as a crash.
            await wait_until(lambda: _polled_twice(log.read_text()), timeout=20, step=0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(20):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return log.read_text()


def _polled_twice(text: str) -> bool:
    return "poll() raised" in text and text.count("by mistake") >= 2


def assert_clean(text: str) -> None:
    assert KEY not in text
    assert "logs-token-XYZ" not in text
    assert "**********" in text
    assert not re.search(r"^forged", text, re.M), "a CR/LF in a message forged a line"


async def test_serve_at_debug_with_the_authors_own_logging_config(
    fake_core: FakeCore, tmp_path: Path
) -> None:
    port = free_port()
    command = [sys.executable, "-m", "runtime", "serve", "tests.logging_target:integration",
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    env = environment(fake_core, tmp_path / "serve", PIPHI_LOG_LEVEL="DEBUG")
    text = await run(command, env, port, {"api_key": KEY, "own_logging": True})
    assert_clean(text)
    assert "HTTP Request: GET" in text, "at DEBUG httpx's request lines are shown (masked)"
    assert "by mistake: **********" in text
    assert "hypercorn saw **********" in text


async def test_serve_default_format_and_json_lines(fake_core: FakeCore, tmp_path: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "runtime", "serve", "tests.logging_target:integration",
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    text = await run(command, environment(fake_core, tmp_path / "text"), port, {"api_key": KEY})
    assert_clean(text)
    assert "HTTP Request" not in text, "httpx's per-request lines are off by default"
    line = next(line for line in text.splitlines() if "poll() raised" in line)
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ERROR tests\.logging_target ", line)
    assert "device_id=hub-1" in line and "config_id=hub-1" in line

    port = free_port()
    command[-1] = str(port)
    env = environment(fake_core, tmp_path / "json", PIPHI_LOG_FORMAT="json")
    text = await run(command, env, port, {"api_key": KEY})
    assert_clean(text)
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert records, text
    polled = [r for r in records if "poll() raised" in r["message"]]
    assert polled and polled[0]["device_id"] == "hub-1" and polled[0]["level"] == "ERROR"
    assert {"time", "level", "logger", "message"} <= polled[0].keys()


async def test_under_the_hypercorn_cli(fake_core: FakeCore, tmp_path: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "hypercorn", "--worker-class", "trio", "--workers", "0",
               "--bind", f"127.0.0.1:{port}", "tests.logging_target:app"]  # fmt: skip
    text = await run(command, environment(fake_core, tmp_path / "cli"), port, {"api_key": KEY})
    assert_clean(text)
    assert "by mistake: **********" in text
    info = [line for line in text.splitlines() if " INFO runtime." in line]
    assert info, f"the runtime's INFO lines reach the log, formatted:\n{text}"
    assert re.match(r"\d{4}-\d\d-\d\d ", info[0])
