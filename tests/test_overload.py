"""The outbox past capacity (issue 18): only the overflow goes to the spool while Core keeps
up, the backlog drains oldest first, a backlog that ages is a concern, and telemetry ids
stay unique across restarts. Virtual time against a real HTTP server on 127.0.0.1
(``runtime.testing.FakeCore``) and a real SQLite spool."""

from __future__ import annotations

import types
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

import runtime._outbox
from runtime import DeviceIdentity, Reading
from runtime._outbox import IdSource
from runtime.delivery import CoreClient, OutboxSettings, open_outbox
from runtime.lowlevel import EventRecord, TelemetryRecord
from runtime.testing import FakeCore

TOKEN = "overload-test-token"


def record(device: int, seq: int, made: float) -> TelemetryRecord:
    identity = DeviceIdentity(
        id=f"d{device}",
        config_id=f"cfg-{device}",
        device_id=f"d{device}",
        container_id="c-1",
        integration_id="int-1",
    )
    readings = (Reading("seq", seq), Reading("made", made))
    return TelemetryRecord(identity, f"d{device}", readings, 1.8e9 + seq)


@pytest.fixture
async def client(core: FakeCore) -> AsyncIterator[CoreClient]:
    async with CoreClient(core.url, container_id="c-1", token=TOKEN, timeout=5.0) as c:
        yield c


@pytest.fixture
def spool_path(tmp_path: Path) -> Path:
    return tmp_path / "spool.db"


@pytest.fixture
def wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The outbox's wall clock follows trio's virtual one (items are stamped with it)."""
    import time

    base = time.time()
    shim = types.SimpleNamespace(time=lambda: base + trio.current_time(), monotonic=time.monotonic)
    monkeypatch.setattr(runtime._outbox, "time", shim)


async def test_past_capacity_only_the_overflow_is_spooled_and_the_backlog_drains_oldest_first(
    core: FakeCore, client: CoreClient, spool_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    # Each request takes 50 ms and the four lanes one request each: 80 readings/s at most.
    # 120 devices at 1 Hz offer 120/s for 40 s. Before, once the 200 items of memory
    # were full every new item went through the spool (insert, read back, delete), so
    # the disk carried everything delivered from then on.
    core.delay = 0.05
    arrivals: list[tuple[float, float, str, int]] = []  # (arrived, made, device, seq)

    def answer(path: str, body: dict[str, Any]) -> int | None:
        metrics = body["metrics"]
        arrivals.append((trio.current_time(), metrics["made"], body["device_id"], metrics["seq"]))
        return None

    core.answer = answer
    settings = OutboxSettings(memory_limit=200)
    devices, seconds, capacity = 120, 40, 80
    async with open_outbox(client, spool_path=spool_path, settings=settings) as outbox:
        start = trio.current_time()
        for n in range(seconds):
            for d in range(devices):
                outbox.telemetry(record(d, n, trio.current_time() - start))
            await trio.sleep(1)
        during = outbox.stats()
        stopped = trio.current_time() - start
        with trio.fail_after(600):
            await outbox.wait_settled()
        drained = trio.current_time() - start
        after = outbox.stats()

    offered = devices * seconds
    assert during.delivered >= 0.9 * capacity * seconds, "goodput stays at capacity"
    buckets: dict[int, int] = defaultdict(int)
    for arrived, *_ in arrivals:
        buckets[int((arrived - start) // 5)] += 1
    assert min(buckets[b] for b in range(1, seconds // 5)) >= 0.9 * capacity * 5, buckets
    # Only the overflow went to the spool, and what was delivered skipped the disk.
    assert during.spooled <= offered - during.delivered, (during.spooled, during.delivered)
    assert during.replayed <= 0.1 * during.delivered, during
    # Once the load stopped the backlog went at full capacity, oldest first: in the
    # order made on each lane, and across lanes to within what one lane holds of a replay
    # batch (what was made in the last seconds was on the lanes already and went first).
    backlog = offered - during.delivered
    assert drained - stopped <= backlog / capacity * 1.15 + 2
    late = [
        (made, device)
        for arrived, made, device, _ in arrivals
        if arrived - start > stopped and made < stopped - 3
    ]
    assert len(late) >= 0.5 * backlog
    newest: dict[int, float] = defaultdict(lambda: float("-inf"))
    for made, device in late:
        lane = outbox.lane_of(f"cfg-{device[1:]}\x00{device}")
        assert newest[lane] <= made, (lane, newest[lane], made)
        assert max(newest.values()) - made <= 5.0, (newest, made)
        newest[lane] = made
    # Nothing lost, nothing twice. A reading that overflowed arrives after newer ones of
    # its device: holding the device's later readings behind it would have sent them all
    # through the disk (test below).
    assert (after.delivered, after.dropped) == (offered, 0)
    by_device: dict[str, list[int]] = defaultdict(list)
    for *_, device, seq in arrivals:
        by_device[device].append(seq)
    assert {d: sorted(seqs) for d, seqs in by_device.items()} == {
        f"d{d}": list(range(seconds)) for d in range(devices)
    }


def event(device: int, n: int) -> EventRecord:
    return EventRecord(
        identity=record(device, 0, 0).identity,
        device_id=f"d{device}",
        event_type="vendor.tick",
        severity="info",
        data={"n": n},
        source="actor",
    )


async def test_an_overflowed_reading_does_not_send_its_devices_next_ones_through_the_disk(
    core: FakeCore, client: CoreClient, spool_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    core.delay = 0.05
    settings = OutboxSettings(memory_limit=8)
    held = "cfg-9\x00d9"
    async with open_outbox(client, spool_path=spool_path, settings=settings) as outbox:
        for d in range(10):  # memory holds 8: the readings of d8 and d9 overflow
            outbox.telemetry(record(d, 0, 0))
        # Its later readings may pass it: holding them behind it would send each through
        # the disk (insert, read back, delete), dearer than sending, so past capacity the
        # rate would fall (issue 18: 0.13 of capacity at 28,000 offered).
        assert held not in outbox._held
        for d in range(10):
            outbox.event(event(d, 0))
        assert held in outbox._held, "an event that overflowed holds its device's events"
        outbox.event(event(9, 1))
        with trio.fail_after(60):
            await outbox.wait_settled()
        stats = outbox.stats()
    assert (stats.delivered, stats.dropped) == (21, 0)
    assert [b["data"]["n"] for b in core.events() if b["device_id"] == "d9"] == [0, 1]


async def test_an_aging_backlog_is_a_concern_until_it_is_delivered(
    core: FakeCore,
    client: CoreClient,
    spool_path: Path,
    autojump_clock: trio.abc.Clock,
    wall_clock: None,
) -> None:
    await core.down()
    async with open_outbox(client, spool_path=spool_path) as outbox:
        assert outbox.stats().backlog_age is None
        for n in range(40):
            outbox.telemetry(record(0, n, n))
            await trio.sleep(1)
            if n == 20:
                young = outbox.stats().backlog_age
                assert "delivery_backlog" not in [c.code for c in outbox.concerns()]
        old = outbox.stats().backlog_age
        (concern,) = [c for c in outbox.concerns() if c.code == "delivery_backlog"]
        await core.up()
        with trio.fail_after(60):
            await outbox.wait_settled()
        assert outbox.stats().backlog_age is None
        assert outbox.concerns() == []
    assert young is not None and 20 <= young <= 22
    assert old is not None and 39 <= old <= 41
    assert "40 s old (over 30 s)" in concern.message and "rows in the spool" in concern.message
    assert concern.hint


async def test_the_backlog_threshold_is_a_setting(
    core: FakeCore,
    client: CoreClient,
    spool_path: Path,
    autojump_clock: trio.abc.Clock,
    wall_clock: None,
) -> None:
    await core.down()
    settings = OutboxSettings(backlog_age_limit=5.0)
    async with open_outbox(client, spool_path=spool_path, settings=settings) as outbox:
        outbox.telemetry(record(0, 0, 0))
        await trio.sleep(4)
        assert "delivery_backlog" not in [c.code for c in outbox.concerns()]
        await trio.sleep(2)
        assert "delivery_backlog" in [c.code for c in outbox.concerns()]
    with pytest.raises(ValueError, match="backlog_age_limit"):
        OutboxSettings(backlog_age_limit=0)


def test_ids_from_two_starts_never_collide() -> None:
    first, second = IdSource(), IdSource()
    a = [first() for _ in range(10_000)]
    b = [second() for _ in range(10_000)]
    assert len(set(a) | set(b)) == 20_000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in a + b)
    assert first.prefix != second.prefix


async def test_telemetry_ids_stay_unique_across_a_restart(
    core: FakeCore, client: CoreClient, spool_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    prefixes = []
    for start in range(3):
        async with open_outbox(client, spool_path=spool_path) as outbox:
            prefixes.append(outbox._ids.prefix)
            for n in range(50):
                outbox.telemetry(record(n % 5, start * 10 + n // 5, 0))
            with trio.fail_after(30):
                await outbox.wait_settled()
    ids = [body["telemetry_id"] for body in core.telemetry()]
    assert len(ids) == len(set(ids)) == 150
    assert len(set(prefixes)) == 3
    assert {i[:16] for i in ids} == set(prefixes)
