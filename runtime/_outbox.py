"""The outbox: every reading and event an actor emits reaches Core, once, in order per device.

How an item travels::

    actor ──telemetry()/event()──► lane queues (memory) ──sender──► Core
                   │                      ▲
                   └──► pending ──writer──► spool (SQLite) ──reader/hand-off──┘

* ``telemetry()`` and ``event()`` never block: they encode the payload, give it the next
  sequence number and put it on one of ``senders`` lanes (chosen by device, so a device's
  items stay in order) or, when the outbox is *spilling*, on the pending list for the spool.
* A lane is one sender task with one request in flight on the shared client. It retries
  its head item with capped, full-jitter backoff that honours ``Retry-After``; items
  behind it wait, which is what keeps per-device order. So do other devices' items on
  the same lane: a failure is assumed to be Core's, not one device's, and one probe per
  lane is what keeps a Core that is down from facing a retry per device.
* The outbox spills (new items go to the spool, not to memory) from the moment memory is
  full, Core fails, auth is missing or rejected, or the spool still holds rows from an
  earlier run. It stops spilling only once every spooled row has been handed back to the
  lanes, so no item can overtake an older one of the same device.
* The spool's rows are deleted only after Core accepted them. A crash therefore means
  redelivery, never loss; payloads carry ``telemetry_id``/``event_id`` so Core can tell.

Data is dropped in one place only: the spool's cap (bytes and age), oldest first, counted,
with one ``runtime.delivery_dropped`` warning event per episode (sent from memory, so the
cap cannot take it too). The same goes for the list of items waiting to be written to the
spool, which only a failing disk can fill. Payloads Core refuses
with a 4xx other than 401/403/404 are moved to the spool's rejected table, not retried.

Durability: ``memory`` (default) keeps the fast path free of disk I/O; a hard kill loses
what is only in memory: the lane queues (at most ``memory_limit`` items, including those
accepted before Core was found down) and items not yet committed to the spool (one batch,
milliseconds). A clean shutdown writes them to the spool within the grace period.
``write_ahead`` puts every item through the spool first (one transaction per batch: group
commit); a hard kill loses at most the batch being committed, a few milliseconds of items.
Either way a committed batch survives a killed process; a power cut may take the last
batches too (WAL with ``synchronous=NORMAL``).
"""

from __future__ import annotations

import json
import os
import random
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import attrs
import trio

from ._config import DeviceIdentity
from ._contract import encode_event, encode_telemetry, iso
from ._core import CoreClient
from ._errors import (
    CoreAuthRejected,
    CoreError,
    CoreIdentityUnknown,
    CoreRejected,
    CoreRouteNotFound,
    SpoolError,
)
from ._health import Concern
from ._logs import runtime_logger
from ._policy import RestartPolicy
from ._scheduler import Doorbell
from ._sink import EventRecord, TelemetryRecord
from ._spool import Rejection, Spool, SpoolRow

__all__ = ["LinkStatus", "Outbox", "OutboxSettings", "OutboxStats", "open_outbox"]

log = runtime_logger("runtime.outbox")

TELEMETRY = 0
EVENT = 1
#: Kind bit: the payload was encoded before the container id was known; fill it at send.
NEEDS_IDENTITY = 2

LinkState = Literal["unknown", "up", "down", "auth_rejected", "no_identity", "misrouted"]

MiB = 1024 * 1024
#: Delivered spool rows are deleted in batches of about this many, or after this wait.
DELETE_BATCH = 500
DELETE_WAIT = 0.05


def _positive(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"OutboxSettings.{attribute.name} must be > 0, got {value!r}")


@attrs.frozen(kw_only=True)
class OutboxSettings:
    """How the outbox delivers; immutable, derive variants with ``attrs.evolve``."""

    senders: int | None = None
    """Concurrent requests toward Core; default: the client's connection count."""
    memory_limit: int = attrs.field(default=10_000, validator=_positive)
    """Items held in memory on the lanes; beyond it new items go to the spool."""
    spill_limit: int = attrs.field(default=50_000, validator=_positive)
    """Items waiting to be written to the spool. Only a failing or hopelessly slow disk
    fills it; past it the oldest waiting items are dropped (and counted)."""
    durability: Literal["memory", "write_ahead"] = attrs.field(
        default="memory", validator=attrs.validators.in_(("memory", "write_ahead"))
    )
    spool_max_bytes: int = attrs.field(default=512 * MiB, validator=_positive)
    spool_max_age: float = attrs.field(default=7 * 24 * 3600.0, validator=_positive)
    retry: RestartPolicy = attrs.field(
        factory=lambda: RestartPolicy(initial_delay=0.5, max_delay=5.0)
    )
    """Backoff between attempts at one item while Core fails (full jitter). The cap is
    short because it bounds how long a Core that is back goes unnoticed; a lane probes
    at most once per wait, and an overloaded Core slows us with ``Retry-After``."""
    slow_retry: float = attrs.field(default=300.0, validator=_positive)
    """Wait between attempts after 401/403 or 404, unless the auth changes first."""
    replay_batch: int = attrs.field(default=1000, validator=_positive)
    shutdown_grace: float = attrs.field(default=5.0, validator=_positive)
    """How long leaving ``open_outbox`` may take to write what is in memory to the spool."""


@attrs.frozen(slots=True)
class LinkStatus:
    """The state of the way to Core, as the last attempt found it."""

    state: LinkState
    since: float
    """Unix time the state began."""
    last_error: dict[str, Any] | None
    """The most recent delivery error (``code``, ``message``, ``hint``, ``at``)."""


@attrs.frozen(slots=True)
class OutboxStats:
    """A snapshot of the outbox's counters; every field is safe to show anyone."""

    accepted: int
    delivered: int
    retried: int
    spooled: int
    replayed: int
    dropped: int
    rejected: int
    in_flight: int
    queue_depth: int
    spool_depth: int
    spool_bytes: int
    spool_oldest_age: float | None
    durability: str
    link: LinkStatus

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


class _Item:
    __slots__ = ("body", "created", "figures", "key", "kind", "seq", "spooled")

    def __init__(
        self,
        seq: int,
        kind: int,
        key: str,
        created: float,
        body: bytes,
        spooled: bool,
        figures: _Figures,
    ) -> None:
        self.seq = seq
        self.kind = kind
        self.key = key
        self.created = created
        self.body = body
        self.spooled = spooled
        self.figures = figures
        """Its config's counters, looked up once when the item is made."""

    def row(self) -> SpoolRow:
        return SpoolRow(self.seq, self.kind, self.key, self.created, self.body)


class _Figures:
    """One config's delivery counts, for its line in /diagnostics."""

    __slots__ = ("accepted", "delivered", "last_delivered")

    def __init__(self) -> None:
        self.accepted = 0
        self.delivered = 0
        self.last_delivered: float | None = None


class _Lane:
    __slots__ = ("attempt", "bell", "busy", "queue", "woken_early")

    def __init__(self) -> None:
        self.queue: deque[_Item] = deque()
        self.bell = Doorbell()
        self.attempt = 0
        self.busy = False
        self.woken_early = False


class Outbox:
    """Takes actors' telemetry and events (it is a ``Sink``) and delivers them to Core.

    Made by ``open_outbox()``, which runs its tasks; read ``stats()`` for health.
    """

    def __init__(
        self,
        client: CoreClient,
        spool: Spool,
        settings: OutboxSettings,
        rng: random.Random | None = None,
    ) -> None:
        self._client = client
        self._spool = spool
        self.settings = settings
        self._rng = rng or random.Random()
        self._lanes = [_Lane() for _ in range(settings.senders or client.connections)]
        self._limit = settings.memory_limit
        self._write_ahead = settings.durability == "write_ahead"
        self._seq = spool.max_seq
        self._memory = 0
        self._pending: deque[_Item] = deque()
        self._deletes: list[tuple[int, int]] = []
        self._rejects: list[Rejection] = []
        # Every spooled row with seq <= cursor is on a lane or gone; rows above are on disk.
        self._cursor = 0
        self._disk_max = spool.max_seq
        self._spilling = self._write_ahead or spool.depth > 0
        self._committing = False
        self._spool_lock = trio.Lock()
        self._writer_bell = Doorbell()
        self._reader_bell = Doorbell()
        self._progress = trio.lowlevel.ParkingLot()
        self._recovered = trio.Event()
        self._link: LinkStatus = LinkStatus("unknown", time.time(), None)
        self._spool_error: dict[str, Any] | None = None
        self._overflow_warned = False
        self._devices: dict[str, _Figures] = {}
        self.accepted = self.delivered = self.retried = self.spooled = 0
        self.replayed = self.dropped = self.rejected = 0

    # -- the Sink protocol: called from actors, never blocks ---------------------------

    def telemetry(self, record: TelemetryRecord) -> None:
        identity = record.identity
        container_id = identity.container_id or self._client.container_id
        metrics: dict[str, Any] = {}
        units: dict[str, str] = {}
        for reading in record.readings:
            metrics[reading.metric] = reading.value
            if reading.unit is not None:
                units[reading.metric] = reading.unit
        body = encode_telemetry(
            os.urandom(16).hex(),
            record.device_id,
            identity.config_id,
            container_id,
            identity.integration_id or self._client.integration_id,
            metrics,
            units,
            iso(record.observed_at),
        )
        kind = TELEMETRY if container_id else TELEMETRY | NEEDS_IDENTITY
        self._accept(kind, identity.config_id, record.device_id, body)

    def event(self, record: EventRecord) -> None:
        self._accept(*self._encode_event(record))

    def _encode_event(self, record: EventRecord) -> tuple[int, str, str, bytes]:
        identity = record.identity
        container_id = identity.container_id or self._client.container_id
        created = iso(record.created_at)
        body = encode_event(
            record.event_id,
            record.event_type,
            created,
            identity.integration_id or self._client.integration_id,
            identity.config_id,
            container_id,
            record.device_id,
            record.severity,
            "rest",
            None,
            dict(record.data),
            created,
        )
        kind = EVENT if container_id else EVENT | NEEDS_IDENTITY
        return kind, identity.config_id, record.device_id, body

    def _accept(
        self, kind: int, config_id: str, device_id: str, body: bytes, *, urgent: bool = False
    ) -> None:
        self._seq += 1
        self.accepted += 1
        figures = self._figures_for(config_id)
        figures.accepted += 1
        item = _Item(
            self._seq, kind, config_id + "\x00" + device_id, time.time(), body, False, figures
        )
        if urgent:  # past the spool's cap, so the cap cannot take it
            self._enqueue(item)
        elif self._spilling or self._memory >= self._limit or kind & NEEDS_IDENTITY:
            self._spill(item)
        else:
            self._enqueue(item)

    def lane_of(self, key: str) -> int:
        """The lane (sender) a device's items travel on: stable across processes."""
        return zlib.crc32(key.encode()) % len(self._lanes)

    def _enqueue(self, item: _Item) -> None:
        lane = self._lanes[self.lane_of(item.key)]
        lane.queue.append(item)
        self._memory += 1
        lane.bell.ring()

    def _spill(self, item: _Item) -> None:
        self._spilling = True
        if len(self._pending) >= self.settings.spill_limit:
            # The disk cannot keep up (or is failing): the oldest unwritten item goes.
            self._pending.popleft()
            self._dropped(1)
        self._pending.append(item)
        self._writer_bell.ring()

    # -- what health shows -------------------------------------------------------------

    def _figures_for(self, config_id: str) -> _Figures:
        figures = self._devices.get(config_id)
        if figures is None:
            figures = self._devices[config_id] = _Figures()
        return figures

    def device_figures(self, config_id: str) -> dict[str, Any]:
        """What this process accepted from and delivered for one config (its Core id)."""
        figures = self._devices.get(config_id)
        if figures is None:
            return {"accepted": 0, "delivered": 0, "last_delivered": None}
        return {
            "accepted": figures.accepted,
            "delivered": figures.delivered,
            "last_delivered": figures.last_delivered,
        }

    def stats(self) -> OutboxStats:
        oldest = self._spool.oldest_created
        link = self._link
        if self._spool_error is not None and link.last_error is not self._spool_error:
            link = attrs.evolve(link, last_error=self._spool_error)
        return OutboxStats(
            accepted=self.accepted,
            delivered=self.delivered,
            retried=self.retried,
            spooled=self.spooled,
            replayed=self.replayed,
            dropped=self.dropped,
            rejected=self.rejected,
            in_flight=sum(lane.busy for lane in self._lanes),
            queue_depth=self._memory + len(self._pending),
            spool_depth=self._spool.depth,
            spool_bytes=self._spool.bytes,
            spool_oldest_age=None if oldest is None else max(0.0, time.time() - oldest),
            durability=self.settings.durability,
            link=link,
        )

    def concerns(self) -> list[Concern]:
        """Why delivery is not healthy now; empty while it is."""
        state = self._link.state
        if state in ("up", "unknown"):
            return []
        error = self._link.last_error or {}
        return [
            Concern(
                f"core_link_{state}",
                f"Core link {state}: {error.get('message', 'no answer')}",
                str(error.get("hint") or "Check that Core is running and reachable."),
            )
        ]

    @property
    def settled(self) -> bool:
        """Nothing is left to deliver: not in memory, not in the spool (rejected aside)."""
        return not (
            self._memory or self._pending or self._deletes or self._committing or self._spool.depth
        )

    async def wait_settled(self) -> None:
        """Wait until ``settled``; bound it with a timeout of your own."""
        while not self.settled:
            await self._progress.park()

    # -- link state ----------------------------------------------------------------------

    def _set_link(self, state: LinkState, error: CoreError | SpoolError | None) -> None:
        last = self._link.last_error
        if error is not None:
            last = {**error.to_dict(), "at": time.time()}
        if state != self._link.state:
            if state == "up":
                log.info("Core link up (was %s)", self._link.state)
            else:
                log.warning("Core link %s: %s", state, error)
            self._link = LinkStatus(state, time.time(), last)
            if state == "up":
                self._recovered.set()
                self._reader_bell.ring()
            elif self._recovered.is_set():
                self._recovered = trio.Event()
            if state != "up":
                self._spilling = True
        elif last is not self._link.last_error:
            self._link = attrs.evolve(self._link, last_error=last)

    # -- tasks ---------------------------------------------------------------------------

    async def _run_lane(self, lane: _Lane) -> None:
        while True:
            while not lane.queue:
                await lane.bell.wait()
            item = lane.queue[0]
            auth_version = self._client.auth_version
            lane.busy = True
            try:
                await self._send(item)
            except CoreError as err:
                lane.busy = False
                await self._failed(lane, item, err, auth_version)
                continue
            lane.busy = False
            lane.queue.popleft()
            lane.attempt = 0
            lane.woken_early = False
            self._memory -= 1
            self.delivered += 1
            figures = item.figures
            figures.delivered += 1
            figures.last_delivered = time.time()
            if item.spooled:
                self._deletes.append((item.seq, len(item.body)))
                self._writer_bell.ring()
            if self._link.state != "up":
                self._set_link("up", None)
            if self._spilling:
                self._reader_bell.ring()
            if self._progress:
                self._progress.unpark_all()

    async def _send(self, item: _Item) -> None:
        body = item.body
        if item.kind & NEEDS_IDENTITY:
            body = self._with_identity(body)
        if item.kind & EVENT:
            await self._client.post_event(body)
        else:
            await self._client.post_telemetry(body)

    def _with_identity(self, body: bytes) -> bytes:
        container_id = self._client.container_id
        if container_id is None:
            raise CoreIdentityUnknown("no container id known yet; the item is held")
        payload = json.loads(body)
        payload["container_id"] = container_id
        payload["integration_id"] = payload.get("integration_id") or self._client.integration_id
        return json.dumps(payload, separators=(",", ":")).encode()

    async def _failed(self, lane: _Lane, item: _Item, err: CoreError, auth_version: int) -> None:
        # A Core without the events route (404) must not hold up the telemetry queued
        # behind an event: park the event as refused. Telemetry's 404 is probed slowly
        # instead, since a Core still starting up may not have mounted its routes yet.
        park = isinstance(err, CoreRejected) or (
            isinstance(err, CoreRouteNotFound) and item.kind & EVENT
        )
        if park:
            # Core answered: this payload will never be accepted as it is.
            lane.queue.popleft()
            self._memory -= 1
            self.rejected += 1
            self._rejects.append(
                Rejection(item.row(), item.spooled, time.time(), err.status, err.message)
            )
            self._writer_bell.ring()
            self._set_link("up", err)
            log.warning("Core refused a payload; kept in the spool's rejected table: %s", err)
            if self._progress:
                self._progress.unpark_all()
            return
        if err.retryable:
            self.retried += 1
            self._set_link("down", err)
            delay = self.settings.retry.delay(lane.attempt, self._rng)
            lane.attempt += 1
            if err.retry_after is not None:
                delay = max(delay, min(err.retry_after, self.settings.slow_retry))
            if err.retry_after is not None or lane.woken_early:
                # Core asked for this wait, or this lane already retried early once after
                # another lane's success and failed again: wait it out in full.
                lane.woken_early = False
                await trio.sleep(delay)
                return
            with trio.move_on_after(delay):
                await self._recovered.wait()
            lane.woken_early = self._recovered.is_set()
            return
        state: LinkState
        if isinstance(err, CoreIdentityUnknown):
            state, wait = "no_identity", float("inf")
        elif isinstance(err, CoreAuthRejected):
            state, wait = "auth_rejected", self.settings.slow_retry
        else:  # 404 or an answer we cannot follow: Core is misconfigured, not down.
            state, wait = "misrouted", self.settings.slow_retry
        self._set_link(state, err)
        if self._client.auth_version != auth_version:
            return  # the auth changed while the request was out: try the new one now
        with trio.move_on_after(wait):
            await self._client.auth_changed()

    async def _run_writer(self) -> None:
        failures = 0
        while True:
            await self._writer_bell.wait()
            if not (self._pending or self._rejects) and len(self._deletes) < DELETE_BATCH:
                # Only deliveries to forget: gather them, one transaction per batch.
                await trio.sleep(DELETE_WAIT)
            try:
                await self._commit()
            except SpoolError as err:
                failures += 1
                self._spool_error = {**err.to_dict(), "at": time.time()}
                log.error("cannot write the delivery spool: %s", err)
                await trio.sleep(self.settings.retry.ceiling(failures))
                self._writer_bell.ring()
            else:
                failures = 0
                self._spool_error = None

    async def _commit(self, *, final: bool = False) -> None:
        if not (self._pending or self._deletes or self._rejects):
            return
        # One spool operation at a time: a replay read must not run between the moment a
        # commit learns what is protected (the cursor) and the moment it trims.
        async with self._spool_lock:
            await self._commit_locked(final)
        self._reader_bell.ring()

    async def _commit_locked(self, final: bool) -> None:
        items = list(self._pending)
        deletes, rejects = self._deletes, self._rejects
        if not (items or deletes or rejects):
            return
        self._pending.clear()
        self._deletes, self._rejects = [], []
        before = self._disk_max
        self._committing = True
        try:
            # Shielded: a commit is short, and its outcome must be known to keep counts true.
            with trio.CancelScope(shield=True):
                outcome = await self._spool.commit(
                    [item.row() for item in items],
                    deletes,
                    rejects,
                    max_bytes=self.settings.spool_max_bytes,
                    older_than=time.time() - self.settings.spool_max_age,
                    protect_upto=self._cursor,
                )
        except BaseException:
            self._pending.extendleft(reversed(items))
            self._deletes[:0] = deletes
            self._rejects[:0] = rejects
            raise
        finally:
            self._committing = False
        self.spooled += len(items)
        if self._progress:
            self._progress.unpark_all()
        if items:
            self._disk_max = max(self._disk_max, max(item.seq for item in items))
        if outcome.dropped:
            self._dropped(outcome.dropped)
        if final or not items or self._cursor < before or outcome.dropped:
            return
        # Every older row is on a lane already: hand the fresh rows over directly rather
        # than reading them back. (Not after a trim, which may have taken some of them;
        # the reader then reads whatever is left.)
        room = self._room(batch=False)
        for item in items[:room]:
            item.spooled = True
            self._enqueue(item)
        if room:
            self._cursor = items[min(room, len(items)) - 1].seq

    def _room(self, *, batch: bool = True) -> int:
        """How many spooled items the lanes may take now; only probes while Core is down.

        With ``batch``, nothing until the lanes are half empty, so replay reads the spool
        in big batches rather than one row per delivery.
        """
        if self._link.state in ("up", "unknown"):
            room, low = self._limit - self._memory, self._limit // 2
        else:
            room, low = len(self._lanes) - self._memory, 0
        if batch and self._memory > low:
            return 0
        return max(0, room)

    async def _run_reader(self) -> None:
        while True:
            await self._reader_bell.wait()
            while self._cursor < self._disk_max and self._room() > 0:
                async with self._spool_lock:
                    await self._replay_batch()
            if (
                self._spilling
                and not self._write_ahead
                and self._link.state == "up"
                and not self._pending
                and not self._committing
                and self._cursor >= self._disk_max
            ):
                self._spilling = False
                if self._spool.depth == 0:
                    self._overflow_warned = False

    async def _replay_batch(self) -> None:
        room = self._room()
        if room <= 0 or self._cursor >= self._disk_max:
            return
        upto = self._disk_max
        limit = min(room, self.settings.replay_batch)
        rows = await self._spool.read_after(self._cursor, limit)
        for row in rows:
            figures = self._figures_for(row.lane_key.partition("\x00")[0])
            self._enqueue(
                _Item(row.seq, row.kind, row.lane_key, row.created, row.payload, True, figures)
            )
        self.replayed += len(rows)
        last = rows[-1].seq if rows else self._cursor
        # A short read returned every row committed before it ran: the cursor moves past
        # all of them, and never below what was handed out.
        self._cursor = last if len(rows) == limit else max(self._cursor, upto, last)

    def _dropped(self, count: int) -> None:
        self.dropped += count
        if self._progress:
            self._progress.unpark_all()
        if self._overflow_warned:
            return  # once per episode: while the disk fails this runs for every new item
        self._overflow_warned = True
        log.warning(
            "delivery spool full: dropping the oldest undelivered items (%d so far; the "
            "'dropped' figure counts the rest; warned again after the spool drains)",
            count,
        )
        warning = self._encode_event(
            EventRecord(
                identity=DeviceIdentity(
                    id="runtime",
                    config_id="runtime",
                    device_id="runtime",
                    container_id=self._client.container_id,
                    integration_id=self._client.integration_id,
                ),
                device_id="runtime",
                event_type="runtime.delivery_dropped",
                severity="warning",
                data={
                    "dropped": count,
                    "spool_max_bytes": self.settings.spool_max_bytes,
                    "spool_max_age": self.settings.spool_max_age,
                    "hint": "Core has been unreachable long enough to fill the spool; raise "
                    "spool_max_bytes/spool_max_age or restore Core.",
                },
                source="runtime",
            )
        )
        self._accept(*warning, urgent=True)

    async def _flush(self) -> None:
        """Write everything still only in memory to the spool (at shutdown)."""
        for lane in self._lanes:
            self._pending.extend(item for item in lane.queue if not item.spooled)
            lane.queue.clear()
        self._memory = 0
        await self._commit(final=True)


@asynccontextmanager
async def open_outbox(
    client: CoreClient,
    *,
    spool_path: str | os.PathLike[str],
    settings: OutboxSettings | None = None,
    rng: random.Random | None = None,
) -> AsyncIterator[Outbox]:
    """Run an outbox delivering through ``client``, spooling to ``spool_path``.

    On entry the spool is opened and anything left in it is replayed first. On exit the
    senders stop and whatever is still in memory is written to the spool, within
    ``settings.shutdown_grace`` seconds: it is delivered on the next start.
    """
    settings = settings or OutboxSettings()
    spool = await Spool.open(spool_path)
    outbox = Outbox(client, spool, settings, rng)
    try:
        async with trio.open_nursery() as nursery:
            for lane in outbox._lanes:
                nursery.start_soon(outbox._run_lane, lane)
            nursery.start_soon(outbox._run_writer)
            nursery.start_soon(outbox._run_reader)
            outbox._reader_bell.ring()
            try:
                yield outbox
            finally:
                nursery.cancel_scope.cancel(reason="outbox closing")
    finally:
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + settings.shutdown_grace
            try:
                await outbox._flush()
            except SpoolError as err:
                log.error("could not write undelivered items to the spool at shutdown: %s", err)
        await spool.close()  # shielded itself
        if outbox._pending:
            log.error(
                "shutdown grace ran out with %d undelivered items not yet in the spool",
                len(outbox._pending),
            )
