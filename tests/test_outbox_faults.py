"""The outbox when the disk, Core's answers or the payloads go wrong (issue 15), in virtual
time against a real HTTP server on 127.0.0.1 (runtime.testing.FakeCore) and a real SQLite spool.

A full disk is SQLite's own: ``PRAGMA max_page_count`` at the spool's current size makes
every write that needs a page fail with SQLITE_FULL, exactly as a full filesystem does
(the real filesystem is in tests/reliability/test_full_disk.py)."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from runtime import MAX_PAYLOAD_BYTES, DeviceIdentity, InvalidEvent, InvalidReading, Reading
from runtime._outbox import Outbox
from runtime._spool import REJECTED_BODY_MAX
from runtime.delivery import CoreClient, OutboxSettings, open_outbox
from runtime.lowlevel import EventRecord, TelemetryRecord
from runtime.testing import FakeCore
from tests.helpers import wait_until

TOKEN = "faults-test-token"


def record(device: int, seq: int, **extra: object) -> TelemetryRecord:
    identity = DeviceIdentity(
        id=f"d{device}",
        config_id=f"cfg-{device}",
        device_id=f"d{device}",
        container_id="c-1",
        integration_id="int-1",
    )
    readings = [Reading("seq", seq), *(Reading(k, v) for k, v in extra.items())]  # type: ignore[arg-type]
    return TelemetryRecord(identity, f"d{device}", tuple(readings), 1.8e9 + seq)


def seqs_by_device(core: FakeCore) -> dict[str, list[int]]:
    seen: dict[str, list[int]] = defaultdict(list)
    for body in core.telemetry():
        seen[body["device_id"]].append(body["metrics"]["seq"])
    return dict(seen)


@pytest.fixture
async def client(core: FakeCore) -> AsyncIterator[CoreClient]:
    async with CoreClient(core.url, container_id="c-1", token=TOKEN, timeout=10.0) as c:
        yield c


@pytest.fixture
def spool_path(tmp_path: Path) -> Path:
    return tmp_path / "spool.db"


def spool_connection(outbox: Outbox) -> sqlite3.Connection:
    return outbox._spool._db.con  # inline under the virtual clock (tests/conftest.py)


def disk_full(outbox: Outbox) -> None:
    con = spool_connection(outbox)
    (pages,) = con.execute("PRAGMA page_count").fetchone()
    con.execute(f"PRAGMA max_page_count={pages}")


def disk_back(outbox: Outbox) -> None:
    spool_connection(outbox).execute("PRAGMA max_page_count=1073741823")


# -- 1. a full disk ------------------------------------------------------------------------


async def test_a_full_disk_is_named_and_delivery_goes_on_from_memory(
    core: FakeCore,
    client: CoreClient,
    spool_path: Path,
    autojump_clock: trio.abc.Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = OutboxSettings(memory_limit=40)
    devices, produced = 4, 0

    async with open_outbox(client, spool_path=spool_path, settings=settings) as outbox:

        async def produce(seconds: int) -> None:
            nonlocal produced
            for _ in range(seconds * 4):
                for d in range(devices):
                    outbox.telemetry(record(d, produced))
                produced += 1
                await trio.sleep(0.25)

        disk_full(outbox)
        await core.down()
        await produce(30)  # Core down, disk full: 480 items for a memory of 40 (+40 waiting)
        during, concerns = outbox.stats(), outbox.concerns()
        assert during.spool_error is not None
        assert during.spool_error["code"] == "spool_disk_full"
        assert "disk full" in during.spool_error["message"]
        assert "spool_disk_full" in [c.code for c in concerns]
        assert during.queue_depth <= 2 * settings.memory_limit, "the memory limit holds"
        assert during.dropped > 0

        await core.up()  # Core answers again; the disk is still full
        delivered = outbox.stats().delivered
        await produce(10)
        assert outbox.stats().delivered >= delivered + 40 * devices, "lanes must not freeze"
        assert outbox.stats().spool_error is not None, "the writer keeps probing the disk"

        disk_back(outbox)  # space is back: everything resumes by itself
        await wait_until(lambda: outbox.stats().spool_error is None, timeout=30)
        assert outbox.concerns() == []
        await produce(5)
        with trio.fail_after(60):
            await outbox.wait_settled()
        stats = outbox.stats()

    assert "cannot rollback" not in caplog.text
    assert "spool_disk_full" in caplog.text
    assert "takes writes again" in caplog.text
    telemetry = seqs_by_device(core)
    assert sum(map(len, telemetry.values())) + stats.dropped == produced * devices
    assert all(s == sorted(s) and len(s) == len(set(s)) for s in telemetry.values())
    warnings = [e for e in core.events() if e["type"] == "runtime.delivery_dropped"]
    assert len(warnings) == 1, "one warning event per episode"
    assert warnings[0]["data"]["cause"] == "disk"


async def test_polls_go_on_while_the_disk_is_full(
    core: FakeCore, client: CoreClient, spool_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    # Outbox.admit puts polls off while the writer is behind; waiting would not bring a
    # full disk back, and memory_limit bounds what waits for it meanwhile.
    settings = OutboxSettings(memory_limit=40, spill_limit=40)
    async with open_outbox(client, spool_path=spool_path, settings=settings) as outbox:
        disk_full(outbox)
        await core.down()
        for n in range(60):
            outbox.telemetry(record(n % 4, n))
        await wait_until(lambda: outbox.stats().spool_error is not None)
        assert outbox.stats().queue_depth >= settings.spill_limit // 2
        assert outbox.admit() and outbox.stats().deferred == 0
        disk_back(outbox)


async def test_a_failed_write_rolls_back_only_an_open_transaction(spool_path: Path) -> None:
    from runtime._spool import Spool, SpoolRow
    from runtime.delivery import SpoolFull

    spool = await Spool.open(spool_path)
    con = spool._db.con
    (pages,) = await spool._db.run(lambda c: c.execute("PRAGMA page_count").fetchone())
    await spool._db.run(lambda c: c.execute(f"PRAGMA max_page_count={pages}"))
    big = [SpoolRow(n, 0, "k", 1.0, b"x" * 3000) for n in range(1, 50)]
    with pytest.raises(SpoolFull) as info:
        await spool.commit(big)
    assert "disk full" in info.value.message
    assert "SQLITE_FULL" in info.value.message
    assert not con.in_transaction
    assert spool.depth == 0, "totals unchanged by a failed commit"
    await spool._db.run(lambda c: c.execute("PRAGMA max_page_count=1073741823"))
    await spool.commit(big)
    assert spool.depth == 49
    await spool.close()


# -- 3. the memory window --------------------------------------------------------------------


async def test_items_waiting_over_the_memory_window_are_written_behind(
    core: FakeCore, client: CoreClient, spool_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    core.delay = 3.0  # slow but answering: the lanes' queues grow
    accepted_at: dict[int, float] = {}
    async with open_outbox(client, spool_path=spool_path) as outbox:
        for n in range(40):
            for d in range(4):
                outbox.telemetry(record(d, n))
                accepted_at[outbox._seq] = trio.current_time()
            await trio.sleep(0.25)
        now = trio.current_time()
        on_disk = {s for (s,) in spool_connection(outbox).execute("SELECT seq FROM items")}
        waiting = [item for lane in outbox._lanes for item in lane.queue]
        old = [i.seq for i in waiting if accepted_at[i.seq] <= now - 1.3]
        young = [i.seq for i in waiting if accepted_at[i.seq] > now - 0.45]
        assert old and young
        assert set(old) <= on_disk, "items that waited over the window are on disk"
        assert not set(young) & on_disk, "fresh items stay in memory only"
        assert outbox.stats().written_behind >= len(old)
        core.delay = 0.0
        with trio.fail_after(120):
            await outbox.wait_settled()
        stats = outbox.stats()
    ids = [body["telemetry_id"] for body in core.telemetry()]
    assert len(ids) == len(set(ids)) == 160, "written-behind rows are never replayed"
    assert seqs_by_device(core) == {f"d{d}": list(range(40)) for d in range(4)}
    assert (stats.spool_depth, stats.replayed) == (0, 0)


# -- 4. oversized payloads --------------------------------------------------------------------


async def test_413_is_terminal_and_a_large_body_is_kept_as_a_summary(
    core: FakeCore, client: CoreClient, spool_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    core.answer = lambda path, body: 413 if "blob" in body.get("metrics", {}) else None
    settings = OutboxSettings(senders=1)
    async with open_outbox(client, spool_path=spool_path, settings=settings) as outbox:
        outbox.telemetry(record(0, 0, blob="x" * 100_000))  # under ours, over this Core's
        for n in range(1, 6):
            outbox.telemetry(record(0, n))
        with trio.fail_after(30):
            await outbox.wait_settled()
        await trio.sleep(1)
        stats = outbox.stats()
    big = [body for _, body in core.attempts if "blob" in body.get("metrics", {})]
    assert len(big) == 1, "413 is never retried"
    assert (stats.rejected, stats.retried, stats.rejected_kept) == (1, 0, 1)
    assert [body["metrics"]["seq"] for body in core.telemetry()] == [1, 2, 3, 4, 5]
    con = sqlite3.connect(spool_path)
    ((status, error, payload),) = con.execute("SELECT status, error, payload FROM rejected")
    con.close()
    assert status == 413
    assert "summary" in error
    summary = json.loads(payload)
    assert len(payload) < REJECTED_BODY_MAX
    assert summary["summary"] is True and summary["bytes"] > 100_000
    assert summary["telemetry_id"] == big[0]["telemetry_id"]
    assert summary["metrics"] == ["blob", "seq"]


async def test_an_oversized_payload_is_refused_before_it_is_queued(
    core: FakeCore, client: CoreClient, spool_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    async with open_outbox(client, spool_path=spool_path) as outbox:
        with pytest.raises(InvalidReading, match="MAX_PAYLOAD_BYTES"):
            outbox.telemetry(record(0, 0, blob="x" * MAX_PAYLOAD_BYTES))
        assert outbox.stats().accepted == 0
    with pytest.raises(InvalidEvent, match="MAX_PAYLOAD_BYTES") as info:
        EventRecord(
            identity=record(0, 0).identity,
            device_id="d0",
            event_type="big",
            severity="info",
            data={"blob": "é" * (MAX_PAYLOAD_BYTES // 6)},  # 1/6 the size in characters
            source="test",
        )
    assert info.value.details["size"] > MAX_PAYLOAD_BYTES
    assert "summary" in info.value.hint


# -- 5. 401 bursts and refusal episodes ---------------------------------------------------------


async def test_a_short_401_burst_resumes_within_seconds(
    core: FakeCore, client: CoreClient, spool_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    burst_until = trio.current_time() + 3.0
    accepted_at: list[float] = []

    def answer(path: str, body: dict[str, object]) -> int | None:
        now = trio.current_time()
        if now < burst_until:
            return 401  # the environment's token is right: Core had a bad moment
        accepted_at.append(now)
        return None

    core.answer = answer
    async with open_outbox(client, spool_path=spool_path) as outbox:
        for n in range(30):
            for d in range(4):
                outbox.telemetry(record(d, n))
            if n == 2:
                during = outbox.stats().link
            await trio.sleep(1)
        await wait_until(lambda: len(core.telemetry()) == 120, timeout=30)
    assert during.state == "auth_rejected"
    assert during.next_probe is not None
    # Probes 1, 2, 4 s apart: delivery resumes at most 4 s after the burst (it was up to
    # 300 s: one probe every 5 minutes).
    assert accepted_at[0] - burst_until <= 4.0 + 0.1
    assert seqs_by_device(core) == {f"d{d}": list(range(30)) for d in range(4)}


async def test_a_refusing_core_logs_one_warning_per_episode(
    core: FakeCore,
    client: CoreClient,
    spool_path: Path,
    autojump_clock: trio.abc.Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    core.status = 422
    async with open_outbox(client, spool_path=spool_path) as outbox:
        for n in range(30):
            outbox.telemetry(record(n % 3, n))
        with trio.fail_after(30):
            await outbox.wait_settled()
        refused = [r for r in caplog.records if "refused" in r.getMessage()]
        core.status = 200
        outbox.telemetry(record(0, 99))
        with trio.fail_after(30):
            await outbox.wait_settled()
        stats = outbox.stats()
    assert stats.rejected == 30
    assert len(refused) == 1, [r.getMessage() for r in refused]
    summary = [r for r in caplog.records if "accepted a payload again" in r.getMessage()]
    assert len(summary) == 1
    assert "30 refused" in summary[0].getMessage() and "30 x 422" in summary[0].getMessage()
    assert summary[0].levelno == logging.WARNING


# -- 7. per-device state ----------------------------------------------------------------------


async def test_a_removed_config_is_forgotten_once_nothing_of_it_is_queued(
    core: FakeCore, client: CoreClient, spool_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    core.delay = 1.0
    async with open_outbox(client, spool_path=spool_path) as outbox:
        for n in range(3):
            outbox.telemetry(record(1, n))
            outbox.telemetry(record(2, n))
        outbox.forget("cfg-1")  # removed with items still queued: kept until they are sent
        assert outbox.device_figures("cfg-1")["accepted"] == 3
        with trio.fail_after(30):
            await outbox.wait_settled()
        assert outbox.device_figures("cfg-1")["accepted"] == 0
        assert outbox.device_figures("cfg-2")["delivered"] == 3
        outbox.forget("cfg-2")  # nothing queued: gone at once
        assert outbox.tracked_configs == 0
        core.delay = 0.0
        for cycle in range(200):  # churn: a thousand configs come and go
            for d in range(5):
                config = cycle * 5 + d
                outbox.telemetry(record(config, 0))
            await trio.sleep(0.1)
            for d in range(5):
                outbox.forget(f"cfg-{cycle * 5 + d}")
        with trio.fail_after(60):
            await outbox.wait_settled()
        assert outbox.tracked_configs == 0
    assert len(core.telemetry()) == 6 + 1000


async def test_figures_follow_rows_on_disk_across_removal_and_restart(
    core: FakeCore, client: CoreClient, spool_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    await core.down()
    async with open_outbox(client, spool_path=spool_path) as outbox:
        for n in range(5):
            outbox.telemetry(record(1, n))
            outbox.telemetry(record(2, n))
            await trio.sleep(1)
        outbox.forget("cfg-1")  # removed while its items wait in the spool
        assert outbox.device_figures("cfg-1")["accepted"] == 5
        outbox.telemetry(record(1, 5))  # configured again before they were delivered
        outbox.forget("cfg-2")
        await core.up()
        with trio.fail_after(60):
            await outbox.wait_settled()
        assert outbox.device_figures("cfg-1") == {
            "accepted": 6,
            "delivered": 6,
            "last_delivered": outbox.device_figures("cfg-1")["last_delivered"],
        }
        assert outbox.tracked_configs == 1, "cfg-2's figures went with its last item"
    await core.down()
    async with open_outbox(client, spool_path=spool_path) as outbox:
        outbox.telemetry(record(3, 0))
        await trio.sleep(5)
    await core.up()
    async with open_outbox(client, spool_path=spool_path) as outbox:
        assert outbox.device_figures("cfg-3")["accepted"] == 0  # held for its spooled row
        assert outbox.tracked_configs == 1
        with trio.fail_after(60):
            await outbox.wait_settled()
        assert outbox.tracked_configs == 0, "a config not running here is forgotten once sent"
