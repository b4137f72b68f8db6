"""Damaged, emptied and vanished state files (issue 15, item 2): the runtime starts, the
damaged file is moved aside with a timestamp (never deleted), what SQLite can still read
is recovered into a fresh file, and the loss is loud: an error event with the counts, a
log line and a ``/diagnostics`` entry. Real files in a tmp dir, damaged byte by byte."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio

from runtime import Integration
from runtime._ledger import CommandLedger
from runtime._recovery import SpoolMarker
from runtime._spool import Spool, SpoolRow
from runtime._web import RUNTIME_KEY
from runtime.delivery import CoreClient, open_outbox
from runtime.lowlevel import open_runtime
from runtime.testing import FakeCore
from tests.helpers import Probe

ROWS = 2000
PAGE = 4096


def row(seq: int) -> SpoolRow:
    body = {
        "telemetry_id": f"t{seq:06d}",
        "device_id": f"d{seq % 7}",
        "config_id": f"cfg-{seq % 7}",
        "container_id": "c-1",
        "metrics": {"seq": seq, "pad": "x" * 200},
    }
    return SpoolRow(seq, 0, f"cfg-{seq % 7}\x00d{seq % 7}", 1.8e9 + seq, json.dumps(body).encode())


async def make_spool(path: Path, rows: int = ROWS) -> None:
    spool = await Spool.open(path)
    for first in range(1, rows + 1, 500):
        await spool.commit([row(seq) for seq in range(first, min(first + 500, rows + 1))])
    await spool.close()  # a clean shutdown: the marker says ROWS


def _pages(data: bytearray) -> int:
    return len(data) // PAGE


def truncated(data: bytearray) -> bytearray:
    return data[: len(data) // 2]


def zeroed_pages(data: bytearray) -> bytearray:
    first = _pages(data) // 3
    data[first * PAGE : (first + 4) * PAGE] = bytes(4 * PAGE)
    return data


def bad_header(data: bytearray) -> bytearray:
    data[:16] = b"NOT A DATABASE!!"
    return data


def replaced_by_text(data: bytearray) -> bytearray:
    return bytearray(b"this spool was overwritten by a log file\n" * 50)


def damaged_last_page(data: bytearray) -> bytearray:
    last = _pages(data) - 1
    data[last * PAGE : (last + 1) * PAGE] = random.Random(1).randbytes(PAGE)
    return data


def damaged_schema_page(data: bytearray) -> bytearray:
    data[100:PAGE] = random.Random(2).randbytes(PAGE - 100)
    return data


def random_bytes(data: bytearray) -> bytearray:
    return bytearray(random.Random(3).randbytes(len(data)))


# Each kind of damage, and the least the salvage must bring back of ROWS.
DAMAGE: dict[str, tuple[Callable[[bytearray], bytearray], int]] = {
    "truncated": (truncated, ROWS * 2 // 5),
    "zeroed_pages": (zeroed_pages, ROWS * 9 // 10),
    "bad_header": (bad_header, ROWS),  # only the magic string: read through a patched copy
    "replaced_by_text": (replaced_by_text, 0),
    "damaged_last_page": (damaged_last_page, ROWS * 9 // 10),
    "damaged_schema_page": (damaged_schema_page, 0),
    "random_bytes": (random_bytes, 0),
}


def damage(path: Path, how: Callable[[bytearray], bytearray]) -> bytes:
    damaged = bytes(how(bytearray(path.read_bytes())))
    path.write_bytes(damaged)
    return damaged


def moved_aside(path: Path) -> Path:
    """The one file ``path`` was moved to: ``<name>.corrupt-<UTC timestamp>``."""
    (aside,) = path.parent.glob(f"{path.name}.corrupt-*[0-9]Z")
    return aside


@pytest.fixture
async def client(core: FakeCore) -> AsyncIterator[CoreClient]:
    async with CoreClient(core.url, container_id="c-1", token="t", timeout=5.0) as c:
        yield c


@pytest.mark.parametrize("kind", sorted(DAMAGE))
async def test_a_damaged_spool_is_moved_aside_salvaged_and_reported(
    kind: str,
    core: FakeCore,
    client: CoreClient,
    tmp_path: Path,
    autojump_clock: trio.abc.Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "state" / "spool.db"
    await make_spool(path)
    how, at_least = DAMAGE[kind]
    damaged = damage(path, how)

    async with open_outbox(client, spool_path=path) as outbox:
        with trio.fail_after(120):
            await outbox.wait_settled()
        stats = outbox.stats()

    aside = moved_aside(path)
    assert aside.read_bytes() == damaged, "the damaged file is kept as it was"
    recovery = stats.recovery
    assert recovery is not None
    assert recovery["reason"] == "corrupt"
    assert recovery["moved_to"] == str(aside)
    recovered = recovery["recovered"]["items"]
    assert at_least <= recovered <= ROWS
    assert (recovery["expected"], recovery["lost"]) == (ROWS, ROWS - recovered)
    # What came back was delivered, each once; the loss is an error event with the counts.
    delivered = {body["telemetry_id"] for body in core.telemetry()}
    assert len(delivered) == recovered == len(core.telemetry())
    (event,) = [e for e in core.events() if e["type"] == "runtime.spool_recovered"]
    assert event["severity"] == "error"
    assert event["data"]["lost"] == ROWS - recovered
    assert event["data"]["moved_to"] == str(aside)
    assert f"lost {ROWS - recovered}" in caplog.text
    assert any(r.levelno == logging.ERROR for r in caplog.records)


async def test_a_zero_byte_spool_is_noticed(
    core: FakeCore, client: CoreClient, tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    path = tmp_path / "spool.db"
    await make_spool(path)
    path.write_bytes(b"")
    async with open_outbox(client, spool_path=path) as outbox:
        await trio.sleep(1)
        stats = outbox.stats()
    assert stats.recovery is not None
    assert stats.recovery["reason"] == "emptied"
    assert (stats.recovery["expected"], stats.recovery["lost"]) == (ROWS, ROWS)
    assert "0 bytes" in stats.recovery["detail"]
    (event,) = [e for e in core.events() if e["type"] == "runtime.spool_recovered"]
    assert event["data"]["lost"] == ROWS


async def test_a_vanished_spool_is_noticed_and_a_drained_one_is_not(
    core: FakeCore, client: CoreClient, tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    path = tmp_path / "spool.db"
    await make_spool(path, rows=30)
    for name in ("spool.db", "spool.db-wal", "spool.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    async with open_outbox(client, spool_path=path) as outbox:
        await trio.sleep(1)
        vanished = outbox.stats().recovery
        with trio.fail_after(30):
            await outbox.wait_settled()
    assert vanished is not None
    assert (vanished["reason"], vanished["lost"]) == ("missing", 30)
    marker = SpoolMarker.read(path)
    assert marker is not None and marker.clean and marker.depth == 0
    async with open_outbox(client, spool_path=path) as outbox:  # drained, then closed
        assert outbox.stats().recovery is None


async def test_a_ledger_with_a_bad_header_is_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "commands.db"
    async with CommandLedger.opened(path) as ledger:
        for n in range(50):
            assert await ledger.begin(f"key-{n}", "fp") is None
            await ledger.finish(f"key-{n}", 200, {"n": n})
    damaged = damage(path, bad_header)
    async with CommandLedger.opened(path) as ledger:
        recovery = ledger.recovery
        known = await ledger.begin("key-7", "fp")
    assert recovery is not None
    assert recovery.reason == "corrupt" and "not a database" in recovery.detail
    assert recovery.recovered == {"commands": 50}
    aside = moved_aside(path)
    assert aside.read_bytes() == damaged
    assert known is not None and known.reply == {"n": 7}, "a recovered key still replays"


async def test_the_runtime_starts_on_damaged_files_and_says_so(
    core: FakeCore, tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    state = tmp_path / "state"
    await make_spool(state / "spool.db")
    async with CommandLedger.opened(state / "commands.db") as ledger:
        await ledger.begin("k", "fp")
    damage(state / "spool.db", random_bytes)
    damage(state / "commands.db", replaced_by_text)
    integration = Integration(id="rec", name="Rec", version="1", actor=Probe)
    env = {
        "PIPHI_CORE_BASE_URL": core.url,
        "PIPHI_CONTAINER_ID": "c-1",
        "PIPHI_STATE_DIR": str(state),
        "PIPHI_CONFIG_SNAPSHOT_PATH": str(tmp_path / "none.json"),
    }
    app = integration.app()
    async with open_runtime(integration, env=env) as rt:
        app.extensions[RUNTIME_KEY] = rt
        async with app.test_app() as test_app:
            await trio.sleep(2)
            response = await test_app.test_client().get("/diagnostics")
            body = await response.get_json()
    diagnostics = body["diagnostics"]
    assert diagnostics["delivery"]["recovery"]["lost"] == ROWS
    storage = diagnostics["runtime"]["storage"]
    assert storage["spool"]["reason"] == "corrupt"
    assert storage["command_ledger"]["reason"] == "corrupt"
    assert storage["command_ledger"]["recovered"] == {"commands": 0}
    types = sorted(e["type"] for e in core.events())
    assert types == ["runtime.ledger_recovered", "runtime.spool_recovered"]
