"""``piphi-runtime serve`` on damaged state files (issue 15, item 2), as a real process.

A spool and a command ledger damaged between two runs used to end the process with
CRITICAL (a crash loop with every device dark), and a spool emptied behind the runtime's
back went unnoticed. Now the process serves, the damage is moved aside, what could be
read is delivered, and the loss is loud: error events at Core, ``/diagnostics`` entries.
(Every kind of damage is in tests/test_recovery.py; this is the process's side.)
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.helpers import wait_until
from tests.reliability._procs import (
    CONTAINER,
    LiveCore,
    device,
    live_runtime,
    report,
    runtime_env,
    start_devices,
)

pytestmark = pytest.mark.slow  # a real process: make test runs it, -m "not slow" skips it

DEVICES = 6


def _truncate_to_half(path: Path) -> int:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return len(data)


def _exists(path: str) -> bool:
    return Path(path).exists()


async def test_the_runtime_serves_on_a_damaged_spool_and_ledger(
    core: LiveCore, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    env = {**runtime_env(core, state), "PIPHI_CONTAINER_ID": CONTAINER}
    log = tmp_path / "runtime.log"
    configs = [device(n, interval=0.1) for n in range(DEVICES)]
    async with live_runtime(env, log) as rt:
        await start_devices(rt, core, configs)
        await core.down()
        await rt.wait_for(
            lambda d: d["delivery"]["spool_depth"] > 400, timeout=20, what="a spool to damage"
        )
        await rt.terminate()
    con = sqlite3.connect(state / "spool.db")
    (spooled,) = con.execute("SELECT COUNT(*) FROM items").fetchone()
    con.close()
    _truncate_to_half(state / "spool.db")
    (state / "commands.db").write_bytes(b"not a database, just text\n" * 100)
    await core.up()

    async with live_runtime(env, log) as rt:
        diagnostics = await rt.diagnostics()
        storage = diagnostics["runtime"]["storage"]
        spool, ledger = storage["spool"], storage["command_ledger"]
        await wait_until(
            lambda: (
                {e["type"] for e in core.events()}
                >= {"runtime.spool_recovered", "runtime.ledger_recovered"}
            ),
            timeout=15,
            step=0.1,
        )
        assert (await rt.health()).code == 200
        await rt.terminate()
    assert spool["reason"] == "corrupt" and _exists(spool["moved_to"])
    assert spool["expected"] == spooled
    assert 0 < spool["recovered"]["items"] < spooled
    assert spool["lost"] == spooled - spool["recovered"]["items"]
    assert diagnostics["delivery"]["recovery"] == spool
    assert ledger["reason"] == "corrupt" and _exists(ledger["moved_to"])
    (event,) = [e for e in core.events() if e["type"] == "runtime.spool_recovered"]
    assert (event["severity"], event["data"]["lost"]) == ("error", spool["lost"])
    text = log.read_text()
    assert "CRITICAL" not in text
    assert f"lost {spool['lost']}" in text
    report(
        "damaged state",
        spooled=spooled,
        recovered=spool["recovered"]["items"],
        lost=spool["lost"],
        ledger=ledger["reason"],
    )
