"""The outbox against a real HTTP server on 127.0.0.1 (``runtime.testing.FakeCore``),
in virtual time."""

from __future__ import annotations

import itertools
import json
import random
import sqlite3
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

import runtime._offload
import runtime._spool
from runtime import DeviceIdentity, Reading, RestartPolicy
from runtime._contract import EventPayload, TelemetryPayload
from runtime.delivery import CoreClient, OutboxSettings, open_outbox
from runtime.lowlevel import EventRecord, TelemetryRecord, open_actor_nursery
from runtime.testing import FakeCore
from tests.helpers import Probe, wait_until

TOKEN = "outbox-test-token"


def record(device: int, seq: int, *, container_id: str | None = "c-1") -> TelemetryRecord:
    identity = DeviceIdentity(
        id=f"d{device}",
        config_id=f"cfg-{device}",
        device_id=f"d{device}",
        container_id=container_id,
        integration_id="int-1",
    )
    return TelemetryRecord(
        identity, f"d{device}", (Reading("seq", seq), Reading("t", 20.5, "C")), 1.8e9 + seq
    )


def sequences(core: FakeCore) -> dict[str, list[int]]:
    seen: dict[str, list[int]] = defaultdict(list)
    for body in core.telemetry():
        seen[body["device_id"]].append(body["metrics"]["seq"])
    return dict(seen)


def assert_each_once_in_order(core: FakeCore, devices: int, per_device: int) -> None:
    ids = [body["telemetry_id"] for body in core.telemetry()]
    assert len(ids) == len(set(ids)) == devices * per_device
    assert sequences(core) == {f"d{d}": list(range(per_device)) for d in range(devices)}


@pytest.fixture
async def client(core: FakeCore) -> AsyncIterator[CoreClient]:
    async with CoreClient(core.url, container_id="c-1", token=TOKEN, timeout=2.0) as c:
        yield c


@pytest.fixture
def spool_path(tmp_path: Path) -> Path:
    return tmp_path / "spool.db"


@pytest.fixture
def appended(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The rows each spool transaction appends, in order."""
    counts: list[int] = []
    commit = runtime._spool.Spool.commit

    async def counting(self: Any, append: Any = (), *args: Any, **kwargs: Any) -> Any:
        counts.append(len(append))
        return await commit(self, append, *args, **kwargs)

    monkeypatch.setattr("runtime._spool.Spool.commit", counting)
    return counts


@pytest.fixture
def slow_disk(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Call with ``seconds``: from then on each spool transaction takes that much longer."""
    commit = runtime._spool.Spool.commit

    def slow_by(seconds: float) -> None:
        async def slow(self: Any, *args: Any, **kwargs: Any) -> Any:
            await trio.sleep(seconds)
            return await commit(self, *args, **kwargs)

        monkeypatch.setattr("runtime._spool.Spool.commit", slow)

    return slow_by


async def test_delivers_telemetry_in_the_contract_shape(
    core: FakeCore, client: CoreClient, spool_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    async with open_outbox(client, spool_path=spool_path) as outbox:
        outbox.telemetry(record(1, 0))
        with trio.fail_after(10):
            await outbox.wait_settled()
        stats = outbox.stats()
    (body,) = core.telemetry()
    assert body == {
        "telemetry_id": body["telemetry_id"],
        "device_id": "d1",
        "config_id": "cfg-1",
        "container_id": "c-1",
        "integration_id": "int-1",
        "metrics": {"seq": 0, "t": 20.5},
        "units": {"t": "C"},
        "timestamp": "2027-01-15T08:00:00+00:00",
    }
    assert len(body["telemetry_id"]) == 32
    TelemetryPayload.model_validate(body)  # the contract's model is what Core receives
    assert (stats.accepted, stats.delivered, stats.spooled, stats.dropped) == (1, 1, 0, 0)
    assert stats.link.state == "up"
    assert core.received[0].token == TOKEN


async def test_events_keep_their_id(
    core: FakeCore, client: CoreClient, spool_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    event = EventRecord(
        identity=record(2, 0).identity,
        device_id="d2",
        event_type="device.unavailable",
        severity="warning",
        data={"reason": "offline"},
        source="supervisor",
    )
    core.status = 503
    async with open_outbox(client, spool_path=spool_path) as outbox:
        outbox.event(event)
        await trio.sleep(3)
        core.status = 200
        with trio.fail_after(60):
            await outbox.wait_settled()
        assert outbox.stats().retried >= 1
    (body,) = core.events()
    assert body["event_id"] == event.event_id
    assert (body["type"], body["severity"], body["device_id"]) == (
        "device.unavailable",
        "warning",
        "d2",
    )
    assert (body["config_id"], body["container_id"], body["integration_id"]) == (
        "cfg-2",
        "c-1",
        "int-1",
    )
    assert body["data"] == {"reason": "offline"}
    assert body["transport"] == "rest"
    EventPayload.model_validate(body)


async def test_core_down_for_a_minute_loses_nothing_and_keeps_order(
    core: FakeCore, client: CoreClient, spool_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    devices, seconds = 5, 100
    async with open_outbox(client, spool_path=spool_path, rng=random.Random(7)) as outbox:

        async def produce() -> None:
            for n in range(seconds):
                for d in range(devices):
                    outbox.telemetry(record(d, n))
                await trio.sleep(1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce)
            await trio.sleep(10.5)
            await core.down()
            await trio.sleep(10)
            during = outbox.stats()
            await trio.sleep(50)
            await core.up()
        with trio.fail_after(120):
            await outbox.wait_settled()
        after = outbox.stats()

    assert during.link.state == "down"
    assert during.link.last_error is not None
    assert during.link.last_error["code"] == "core_unavailable"
    assert during.spool_depth > 0, "items accepted during the outage must be on disk"
    assert_each_once_in_order(core, devices, seconds)
    assert after.dropped == 0
    assert after.delivered == devices * seconds, "nothing was sent twice"
    assert after.replayed <= after.spooled
    assert after.retried > 0
    assert after.spooled >= devices * 50
    assert (after.spool_depth, after.queue_depth, after.in_flight) == (0, 0, 0)
    assert after.link.state == "up"


async def test_a_restart_replays_the_spool_in_order(
    core: FakeCore, client: CoreClient, spool_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    await core.down()
    async with open_outbox(client, spool_path=spool_path) as outbox:
        for n in range(20):
            for d in range(3):
                outbox.telemetry(record(d, n))
        await trio.sleep(5)
        assert outbox.stats().delivered == 0
    await core.up()
    async with open_outbox(client, spool_path=spool_path) as again:
        first = again.stats()
        await wait_until(lambda: again.stats().spool_depth == 0 and again.stats().queue_depth == 0)
        again.telemetry(record(0, 20))
        with trio.fail_after(10):
            await again.wait_settled()
        stats = again.stats()
    assert first.spool_depth == 60
    assert stats.delivered == 61
    assert stats.replayed == 60
    ids = [body["telemetry_id"] for body in core.telemetry()]
    assert len(ids) == len(set(ids)) == 61
    assert sequences(core) == {
        "d0": list(range(21)),
        "d1": list(range(20)),
        "d2": list(range(20)),
    }


async def test_shutdown_spools_what_is_in_memory(
    core: FakeCore, client: CoreClient, spool_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    core.delay = 30  # every request hangs past the client's timeout
    async with open_outbox(client, spool_path=spool_path) as outbox:
        for n in range(10):
            outbox.telemetry(record(0, n))
        await trio.sleep(0.5)
        assert outbox.stats().spooled == 0, "memory first: nothing on disk yet"
    con = sqlite3.connect(spool_path)
    seqs = [json.loads(p)["metrics"]["seq"] for (p,) in con.execute("SELECT payload FROM items")]
    con.close()
    assert sorted(seqs) == list(range(10))


async def test_held_until_a_container_id_is_known(
    core: FakeCore, spool_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    async with CoreClient(core.url) as client, open_outbox(client, spool_path=spool_path) as ob:
        for n in range(5):
            ob.telemetry(record(0, n, container_id=None))
        await trio.sleep(120)
        held = ob.stats()
        assert core.requests == 0
        client.set_auth(container_id="c-late", token=TOKEN)
        with trio.fail_after(30):
            await ob.wait_settled()
    assert held.link.state == "no_identity"
    assert held.link.last_error is not None
    assert held.link.last_error["code"] == "core_identity_unknown"
    assert held.delivered == 0
    assert held.spool_depth >= 4
    assert [body["metrics"]["seq"] for body in core.telemetry()] == list(range(5))
    assert {body["container_id"] for body in core.telemetry()} == {"c-late"}
    assert {r.container_id for r in core.received} == {"c-late"}


async def test_401_probes_with_backoff_until_the_token_changes(
    core: FakeCore,
    spool_path: Path,
    autojump_clock: trio.abc.Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    core.token = "the-right-token"
    async with (
        CoreClient(core.url, container_id="c-1", token="a-stale-token") as client,
        open_outbox(client, spool_path=spool_path) as outbox,
    ):
        for n in range(50):
            outbox.telemetry(record(n % 5, n // 5))
        await trio.sleep(600)
        stats = outbox.stats()
        attempts = core.requests
        client.set_auth(token="the-right-token")
        with trio.fail_after(30):
            await outbox.wait_settled()
    assert stats.link.state == "auth_rejected"
    assert stats.link.last_error is not None
    assert stats.link.last_error["code"] == "core_auth_rejected"
    assert "token" in stats.link.last_error["hint"]
    assert "a-stale-token" not in str(stats.to_dict())
    assert "Core link auth_rejected" in caplog.text
    assert "a-stale-token" not in caplog.text
    assert "the-right-token" not in caplog.text
    # The lanes probe together on one schedule, 1 s doubling to 60 s: over 600 s that is
    # 15 rounds (at 0, 1, 3, 7, 15, 31, 63, then every 60 s), one request per lane each.
    probe = OutboxSettings().probe
    rounds, at = 1, 0.0
    while (at := at + probe.ceiling(rounds - 1)) <= 600:
        rounds += 1
    assert rounds == 15
    assert attempts <= 4 * rounds
    assert stats.link.next_probe is not None
    next_probe = datetime.fromisoformat(stats.link.next_probe)
    assert next_probe.tzinfo is not None
    assert 0 < (next_probe - datetime.now(UTC)).total_seconds() <= 60.5
    assert stats.delivered == 0
    assert_each_once_in_order(core, 5, 10)


async def test_retry_after_is_honoured(
    core: FakeCore, client: CoreClient, spool_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    core.status = 503
    core.headers = [("Retry-After", "20")]
    settings = OutboxSettings(senders=1)
    async with open_outbox(client, spool_path=spool_path, settings=settings) as outbox:
        outbox.telemetry(record(0, 0))
        await trio.sleep(59)
        assert core.requests == 3  # at 0, 20 and 40 s
        core.status = 200
        with trio.fail_after(30):
            await outbox.wait_settled()
    assert len(core.telemetry()) == 1


async def test_a_refused_payload_is_parked_and_the_rest_flows(
    core: FakeCore,
    client: CoreClient,
    spool_path: Path,
    autojump_clock: trio.abc.Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    core.status = 422
    async with open_outbox(client, spool_path=spool_path) as outbox:
        outbox.telemetry(record(0, 0))
        with trio.fail_after(10):
            await outbox.wait_settled()
        core.status = 200
        outbox.telemetry(record(0, 1))
        with trio.fail_after(10):
            await outbox.wait_settled()
        stats = outbox.stats()
    assert (stats.rejected, stats.delivered, stats.retried) == (1, 1, 0)
    assert [body["metrics"]["seq"] for body in core.telemetry()] == [1]
    con = sqlite3.connect(spool_path)
    ((status, error, payload),) = con.execute("SELECT status, error, payload FROM rejected")
    con.close()
    assert status == 422
    assert "422" in error
    assert json.loads(payload)["metrics"]["seq"] == 0
    assert "rejected table" in caplog.text


async def test_spool_overflow_drops_the_oldest_and_says_so(
    core: FakeCore, client: CoreClient, spool_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    await core.down()
    size = len(json.dumps({"x": 0}))  # any payload is far larger; only the ratio matters
    settings = OutboxSettings(spool_max_bytes=40 * 250 + size)
    async with open_outbox(client, spool_path=spool_path, settings=settings) as outbox:
        for n in range(400):
            outbox.telemetry(record(0, n))
            if n % 50 == 49:
                await trio.sleep(1)
        await trio.sleep(5)
        full = outbox.stats()
        await core.up()
        with trio.fail_after(120):
            await outbox.wait_settled()
        stats = outbox.stats()
    assert full.dropped > 0
    # The 50 items on the lane were written behind after a second (their rows are deleted
    # once delivered): the cap neither takes nor counts them.
    assert full.written_behind >= 50
    assert full.spool_bytes <= settings.spool_max_bytes + full.written_behind * 400
    assert stats.dropped == full.dropped
    delivered = [body["metrics"]["seq"] for body in core.telemetry()]
    assert len(delivered) + stats.dropped == 400
    assert delivered == sorted(delivered)
    # The first 50 were on a lane, in memory, when Core was found down; the spool then kept
    # only its newest rows, dropping the oldest.
    kept_on_disk = 400 - 50 - stats.dropped
    assert delivered == list(range(50)) + list(range(400 - kept_on_disk, 400))
    (warning,) = [e for e in core.events() if e["type"] == "runtime.delivery_dropped"]
    assert warning["severity"] == "warning"
    assert warning["data"]["dropped"] >= 1


async def test_memory_full_spills_to_the_spool_and_replays_it_oldest_first(
    core: FakeCore, client: CoreClient, spool_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    core.delay = 0.01
    settings = OutboxSettings(memory_limit=20)
    async with open_outbox(client, spool_path=spool_path, settings=settings) as outbox:
        for n in range(100):
            for d in range(4):
                outbox.telemetry(record(d, n))
        with trio.fail_after(600):
            await outbox.wait_settled()
        stats = outbox.stats()
    assert stats.spooled > 0
    assert stats.dropped == 0
    assert_each_once_in_order(core, 4, 100)


async def test_write_ahead_puts_every_item_on_disk_first(
    core: FakeCore, client: CoreClient, spool_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    settings = OutboxSettings(durability="write_ahead")
    async with open_outbox(client, spool_path=spool_path, settings=settings) as outbox:
        for n in range(30):
            for d in range(3):
                outbox.telemetry(record(d, n))
            await trio.sleep(0.1)
        with trio.fail_after(30):
            await outbox.wait_settled()
        await wait_until(lambda: outbox.stats().spool_depth == 0)
        stats = outbox.stats()
    assert (stats.spooled, stats.delivered, stats.durability) == (90, 90, "write_ahead")
    assert_each_once_in_order(core, 3, 30)


async def test_a_slow_core_never_delays_polling(
    core: FakeCore, client: CoreClient, spool_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    core.delay = 3.0  # every request takes 3 s; actors poll every second
    async with (
        open_outbox(client, spool_path=spool_path) as outbox,
        open_actor_nursery(outbox, rng=random.Random(3)) as actors,
    ):
        probes = [actors.spawn(Probe, {"id": f"p{i}"}) for i in range(20)]
        await trio.sleep(60)
        healths = [p.health() for p in probes]
        times = [p.actor.times("poll") for p in probes]  # type: ignore[attr-defined]
        backlog = outbox.stats()
    assert min(len(t) for t in times) >= 59
    gaps = [b - a for t in times for a, b in itertools.pairwise(t)]
    assert max(gaps) < 1.01, "a poll was late while Core took 3 s per request"
    assert all(h.overruns == 0 for h in healths)
    assert backlog.queue_depth > 0, "the test must really have Core as the bottleneck"


async def test_counters_never_show_the_token(
    core: FakeCore, client: CoreClient, spool_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    core.status = 500
    async with open_outbox(client, spool_path=spool_path) as outbox:
        outbox.telemetry(record(0, 0))
        await trio.sleep(2)
        stats = outbox.stats()
    assert stats.link.state == "down"
    assert TOKEN not in repr(stats)
    assert TOKEN not in json.dumps(stats.to_dict())


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="memory_limit"):
        OutboxSettings(memory_limit=0)
    with pytest.raises(ValueError, match="durability"):
        OutboxSettings(durability="fsync-always")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="replay_batch"):
        OutboxSettings(replay_batch=4000)  # one read is one SQLite value, under 1 GB
    assert attrs.evolve(OutboxSettings(), durability="write_ahead").durability == "write_ahead"


async def test_with_real_worker_threads_and_the_real_clock(
    core: FakeCore, client: CoreClient, spool_path: Path
) -> None:
    await core.down()
    fast = OutboxSettings(retry=RestartPolicy(initial_delay=0.01, max_delay=0.05))
    async with open_outbox(client, spool_path=spool_path, settings=fast) as outbox:
        for n in range(50):
            for d in range(4):
                outbox.telemetry(record(d, n))
            if n == 10:
                await wait_until(lambda: outbox.stats().link.state == "down", timeout=10)
        await wait_until(lambda: outbox.stats().spool_depth > 0, timeout=10)
        await core.up()
        with trio.fail_after(10):
            await outbox.wait_settled()
    assert_each_once_in_order(core, 4, 50)


async def test_actors_deliver_through_the_outbox_without_any_change(
    core: FakeCore, client: CoreClient, spool_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    async with (
        open_outbox(client, spool_path=spool_path) as outbox,
        open_actor_nursery(outbox, rng=random.Random(3)) as actors,
    ):
        actors.spawn(
            Probe,
            {"id": "p1", "configId": "uuid-1", "integrationId": "int-9", "polls": ["ok", "down"]},
        )
        await trio.sleep(10.5)
    telemetry = core.telemetry()
    assert {(t["config_id"], t["device_id"], t["container_id"]) for t in telemetry} == {
        ("uuid-1", "p1", "c-1")
    }
    assert {t["integration_id"] for t in telemetry} == {"int-9"}
    counts = [t["metrics"]["n"] for t in telemetry]
    assert counts == sorted(counts) and len(counts) >= 9
    assert [e["type"] for e in core.events()] == ["device.unavailable", "device.available"]
    assert {e["config_id"] for e in core.events()} == {"uuid-1"}


async def test_a_flapping_core_with_real_threads_sends_each_item_once(
    core: FakeCore, client: CoreClient, spool_path: Path
) -> None:
    fast = OutboxSettings(memory_limit=50, retry=RestartPolicy(initial_delay=0.01, max_delay=0.05))
    devices, per_device = 8, 150
    async with open_outbox(client, spool_path=spool_path, settings=fast) as outbox:
        for n in range(per_device):
            for d in range(devices):
                outbox.telemetry(record(d, n))
            if n % 10 == 0:
                await trio.sleep(0.01)
            if n % 50 == 25:
                await core.down()
                await trio.sleep(0.1)
                await core.up()
        with trio.fail_after(30):
            await outbox.wait_settled()
        stats = outbox.stats()
    ids = [body["telemetry_id"] for body in core.telemetry()]
    assert len(set(ids)) == devices * per_device
    # Every reading arrived; one that overflowed memory may come after newer ones.
    seen = {device: sorted(set(seqs)) for device, seqs in sequences(core).items()}
    assert seen == {f"d{d}": list(range(per_device)) for d in range(devices)}
    # Requests cut off mid-flight by the outage may arrive twice; the outbox itself never
    # hands an item out twice.
    assert stats.delivered == devices * per_device
    assert stats.replayed <= stats.spooled


async def test_replay_racing_new_commits_hands_out_each_row_once(
    core: FakeCore,
    client: CoreClient,
    spool_path: Path,
    autojump_clock: trio.abc.Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # SQLite calls that take (virtual) time and queue behind each other, as in a worker
    # thread: a replay read can then wait while a commit of new rows finishes.
    async def slow(fn: Any, *args: Any, limiter: trio.CapacityLimiter | None = None) -> Any:
        if limiter is None:
            return fn(*args)
        async with limiter:
            await trio.sleep(0.003)
            return fn(*args)

    monkeypatch.setattr(runtime._offload, "offload", slow)
    await core.down()
    settings = OutboxSettings(memory_limit=40, replay_batch=25)
    async with open_outbox(client, spool_path=spool_path, settings=settings) as outbox:

        async def produce() -> None:
            for n in range(300):
                for d in range(3):
                    outbox.telemetry(record(d, n))
                await trio.sleep(0.002)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce)
            await trio.sleep(0.2)
            await core.up()
        with trio.fail_after(120):
            await outbox.wait_settled()
        stats = outbox.stats()
    assert stats.delivered == 900
    assert stats.replayed <= stats.spooled
    assert_each_once_in_order(core, 3, 300)


async def test_one_failing_device_keeps_its_backoff_while_others_deliver(
    core: FakeCore, client: CoreClient, spool_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    core.headers = [("Retry-After", "20")]
    core.answer = lambda path, body: 503 if body.get("device_id") == "d0" else None
    settings = OutboxSettings(senders=4)
    async with open_outbox(client, spool_path=spool_path, settings=settings) as outbox:
        # Devices on other lanes than d0's: a lane holds its own queue while it retries.
        lane = outbox.lane_of
        others = [d for d in range(1, 40) if lane(f"cfg-{d}\x00d{d}") != lane("cfg-0\x00d0")][:2]
        outbox.telemetry(record(0, 0))
        for n in range(60):
            for d in others:
                outbox.telemetry(record(d, n))
            await trio.sleep(1)
        d0_attempts = sum(1 for _, body in core.attempts if body.get("device_id") == "d0")
    delivered = {body["device_id"] for body in core.telemetry()}
    assert {f"d{d}" for d in others} <= delivered
    # Retry-After 20 s over 60 s: about 3 attempts, not one per success of another lane.
    assert d0_attempts <= 5


async def test_an_event_core_has_no_route_for_is_parked_and_telemetry_flows(
    core: FakeCore, client: CoreClient, spool_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    core.answer = lambda path, body: 404 if path.endswith("/ingest") else None
    async with open_outbox(client, spool_path=spool_path, settings=OutboxSettings(senders=1)) as ob:
        ob.event(
            EventRecord(
                identity=record(0, 0).identity,
                device_id="d0",
                event_type="device.configured",
                severity="info",
                data={},
                source="test",
            )
        )
        for n in range(5):
            ob.telemetry(record(0, n))
        with trio.fail_after(30):
            await ob.wait_settled()
        stats = ob.stats()
    assert stats.rejected == 1
    assert [body["metrics"]["seq"] for body in core.telemetry()] == list(range(5))


async def test_a_backlog_reaches_the_spool_in_bounded_transactions(
    core: FakeCore,
    client: CoreClient,
    spool_path: Path,
    autojump_clock: trio.abc.Clock,
    monkeypatch: pytest.MonkeyPatch,
    appended: list[int],
) -> None:
    # Each transaction appends at most COMMIT_ROWS (the writer's thread packs a batch
    # holding the GIL); what waits beyond goes in the next ones, and so does the shutdown's.
    monkeypatch.setattr("runtime._outbox.COMMIT_ROWS", 7)
    core.status = 503
    async with open_outbox(client, spool_path=spool_path) as outbox:
        outbox.telemetry(record(3, 0))
        await wait_until(lambda: outbox.stats().spool_depth == 1)  # Core is down: all spills
        appended.clear()
        for n in range(30):  # all 30 wait for the writer at once
            outbox.telemetry(record(n % 3, n // 3))
        await wait_until(lambda: outbox.stats().spool_depth == 31)
        assert appended == [7, 7, 7, 7, 2]
        core.status = 200
        with trio.fail_after(600):
            await outbox.wait_settled()
        ids = [body["telemetry_id"] for body in core.telemetry()]
        assert len(ids) == len(set(ids)) == 31
        assert sequences(core) == {
            "d0": list(range(10)),
            "d1": list(range(10)),
            "d2": list(range(10)),
            "d3": [0],
        }
        core.delay = 30  # what comes now stays in memory until the shutdown writes it
        for n in range(10, 30):
            outbox.telemetry(record(0, n))
        await trio.sleep(0.2)
        appended.clear()
    assert appended and max(appended) == 7 and sum(appended) >= 20
    con = sqlite3.connect(spool_path)
    (depth,) = con.execute("SELECT COUNT(*) FROM items").fetchone()
    con.close()
    assert depth == 20


async def test_a_writer_near_its_limit_takes_all_that_waits(
    core: FakeCore,
    client: CoreClient,
    spool_path: Path,
    autojump_clock: trio.abc.Clock,
    monkeypatch: pytest.MonkeyPatch,
    appended: list[int],
) -> None:
    # Past half of spill_limit, one transaction takes everything waiting: a long commit
    # stalls the lanes a little, dropping readings is worse.
    monkeypatch.setattr("runtime._outbox.COMMIT_ROWS", 7)
    core.status = 503
    settings = OutboxSettings(spill_limit=40)
    async with open_outbox(client, spool_path=spool_path, settings=settings) as outbox:
        outbox.telemetry(record(0, 0))
        await wait_until(lambda: outbox.stats().link.state == "down")  # now all spills
        for n in range(1, 31):  # no checkpoint: all 30 wait for the writer at once
            outbox.telemetry(record(n % 3, n // 3))
        await wait_until(lambda: outbox.stats().spool_depth == 31)
        assert 30 in appended
        assert outbox.stats().dropped == 0


async def test_write_behind_keeps_its_window_while_a_backlog_waits(
    core: FakeCore,
    client: CoreClient,
    spool_path: Path,
    autojump_clock: trio.abc.Clock,
    monkeypatch: pytest.MonkeyPatch,
    slow_disk: Callable[[float], None],
) -> None:
    # Past capacity more than a transaction's worth always waits for the writer; what has
    # waited on a lane for memory_window still goes to disk with every commit.
    monkeypatch.setattr("runtime._outbox.COMMIT_ROWS", 5)
    slow_disk(0.2)  # a disk that takes 200 ms a transaction
    core.delay = 3.0
    async with open_outbox(
        client, spool_path=spool_path, settings=OutboxSettings(memory_limit=8)
    ) as outbox:
        for n in range(40):
            for d in range(10):
                outbox.telemetry(record(d, n))
            await trio.sleep(0.25)
        assert len(outbox._pending) > 5, "a backlog waits for the writer"
        window = outbox.settings.memory_window
        now = trio.current_time()
        stale = [
            item
            for lane in outbox._lanes
            for item in lane.queue
            if not item.spooled and item.due - window < now - 2 * window
        ]
        assert outbox.written_behind > 0
        assert stale == []
        core.delay = 0
        with trio.fail_after(600):
            await outbox.wait_settled()
    assert outbox.stats().dropped == 0


async def test_polls_are_put_off_while_half_the_spill_limit_waits_for_the_writer(
    core: FakeCore,
    client: CoreClient,
    spool_path: Path,
    autojump_clock: trio.abc.Clock,
    slow_disk: Callable[[float], None],
) -> None:
    # Making a reading the writer cannot take costs the core it needs; one dropped at
    # spill_limit is lost after it was made. So past half the limit, polls wait.
    slow_disk(1.0)  # a writer that takes a second a transaction
    core.status = 503
    settings = OutboxSettings(spill_limit=40)
    async with open_outbox(client, spool_path=spool_path, settings=settings) as outbox:
        outbox.telemetry(record(0, 0))
        await wait_until(lambda: outbox.stats().link.state == "down")  # now all spills
        assert outbox.admit()
        for n in range(1, 20):
            outbox.telemetry(record(n % 3, n))
        assert outbox.admit(), "19 wait: under half of spill_limit"
        outbox.telemetry(record(0, 20))
        assert not outbox.admit() and not outbox.admit()
        assert outbox.stats().deferred == 2
        await wait_until(outbox.admit)  # the writer took them all (each check counts)
        await wait_until(lambda: outbox.stats().spool_depth == 21)
        assert outbox.stats().dropped == 0


async def test_while_core_answers_polls_wait_once_a_few_hundred_items_wait_for_the_writer(
    core: FakeCore,
    client: CoreClient,
    spool_path: Path,
    autojump_clock: trio.abc.Clock,
    monkeypatch: pytest.MonkeyPatch,
    slow_disk: Callable[[float], None],
) -> None:
    # With Core answering, an overflow the writer cannot take at once means the lanes are
    # past capacity, and each reading made to be spilled costs the core they need. With
    # Core down the spool is the only way on: polls wait only from half of spill_limit.
    monkeypatch.setattr("runtime._outbox.DEFER_AFTER", 10)
    slow_disk(1.0)
    core.status = 503
    async with open_outbox(
        client, spool_path=spool_path, settings=OutboxSettings(memory_limit=8)
    ) as outbox:
        outbox.telemetry(record(0, 0))
        await wait_until(lambda: outbox.stats().link.state == "down")
        for n in range(1, 30):
            outbox.telemetry(record(n, n))
        assert len(outbox._pending) > 10
        assert outbox.admit(), "Core down: the spool is the only way on"
        core.status = 200
        with trio.fail_after(600):
            await outbox.wait_settled()
        for n in range(30):  # 8 fit in memory, the rest overflow
            outbox.telemetry(record(n, 100 + n))
        assert outbox.stats().link.state == "up"
        assert not outbox.admit()
        assert outbox.stats().deferred == 1
        await wait_until(outbox.admit)
        with trio.fail_after(600):
            await outbox.wait_settled()
        stats = outbox.stats()
    assert (stats.delivered, stats.dropped) == (60, 0)


async def test_polls_go_on_while_items_wait_for_the_writer_below_capacity(
    core: FakeCore,
    client: CoreClient,
    spool_path: Path,
    autojump_clock: trio.abc.Clock,
    monkeypatch: pytest.MonkeyPatch,
    slow_disk: Callable[[float], None],
) -> None:
    # With write_ahead every item waits for the writer first; that is not past capacity.
    monkeypatch.setattr("runtime._outbox.DEFER_AFTER", 10)
    slow_disk(1.0)
    settings = OutboxSettings(durability="write_ahead")
    async with open_outbox(client, spool_path=spool_path, settings=settings) as outbox:
        outbox.telemetry(record(0, 0))
        with trio.fail_after(600):
            await outbox.wait_settled()
        assert outbox.stats().link.state == "up"
        for n in range(30):
            outbox.telemetry(record(n, n + 1))
        assert len(outbox._pending) > 10
        assert outbox.admit() and outbox.stats().deferred == 0
        with trio.fail_after(600):
            await outbox.wait_settled()
        assert outbox.stats().delivered == 31
