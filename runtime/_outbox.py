"""The outbox: every reading and event an actor emits reaches Core, once, in order per device
(but for readings that overflowed past capacity, below).

How an item travels::

    actor ──telemetry()/event()──► lane queues (memory) ──sender──► Core
                   │                      ▲     │ waited over memory_window
                   │                      │     ▼ (written behind, stays on the lane)
                   └──► pending ──writer──► spool (SQLite) ──reader/hand-off──┘

* ``telemetry()`` and ``event()`` never block: they encode the payload, give it the next
  sequence number and put it on one of ``senders`` lanes (chosen by device, so a device's
  items stay in order) or, when the outbox is *spilling*, on the pending list for the spool.
  A payload over ``MAX_PAYLOAD_BYTES`` is refused there (``InvalidReading``/``InvalidEvent``).
* A lane is one sender task with its own connection to Core (``CoreLane``). While Core
  answers it writes several of its queued items at once (HTTP/1.1 pipelining, at most
  one per device, so a failed item never lets a later one of its device through), and
  one cancel scope bounds all its exchanges (no scope per request). It retries
  its head item with capped, full-jitter backoff that honours ``Retry-After``; items
  behind it wait, which is what keeps per-device order. So do other devices' items on
  the same lane: a failure is assumed to be Core's, not one device's, and one probe per
  lane is what keeps a Core that is down from facing a retry per device. After 401/403
  (or a 404 on telemetry) the lanes probe on one shared schedule, 1 s doubling to 60 s,
  shown as ``link.next_probe``; a changed token is tried at once.
* The outbox spills (every new item goes to the spool, not to memory) while Core fails or
  auth is missing or rejected. While Core answers only the overflow does: an item that
  finds its lane congested (its oldest item waiting over ``queue_wait``) or memory full.
  Items of a device whose older items went to the spool while Core failed, and events of
  one whose older events did, follow them there (``_held``), so they never overtake them.
  A *reading* that overflowed does not hold its device: holding every later reading
  behind it sent each through SQLite (insert, read back, delete: dearer than sending it),
  and past capacity the rate fell to a tenth of capacity; each reading carries its own
  timestamp and id, so arriving after newer ones loses nothing. What is delivered then
  never touches the disk, so past capacity the delivery rate stays at capacity. The
  spool is read back, oldest first, only into the room new items leave (``_room``), so
  the backlog never crowds them out.
* ``backlog_age()``, the age of the oldest undelivered item, is a concern
  (``delivery_backlog``) past ``backlog_age_limit``.
* An item that has waited on a lane for ``memory_window`` (1 s) is written to the spool
  behind it, and stays on its lane: a slow Core can no longer keep thousands of items
  only in memory for the whole slowdown. Its row is deleted once Core accepted it.
* The spool's rows are deleted only after Core accepted them. A crash therefore means
  redelivery, never loss; payloads carry ``telemetry_id``/``event_id`` so Core can tell.

When the spool cannot be written (a full disk, an I/O error), the failure is classified,
logged with its cause and shown as a concern (``/health`` degraded), and delivery goes on
from memory while Core answers: what waits for the disk is handed to the lanes in order.
Memory then holds at most ``memory_limit`` items waiting for the disk besides the lanes;
past that the oldest are dropped, counted, with one warning event. The writer retries
with backoff and everything resumes by itself once the disk takes writes again.

Data is dropped in these places only, oldest first, counted, with one
``runtime.delivery_dropped`` warning event per episode (sent from memory, so the cap
cannot take it too): the spool's cap (bytes and age), the list of items waiting to be
written to the spool (``spill_limit``, which only a failing or hopelessly slow disk fills;
``memory_limit`` while the disk fails). Payloads Core refuses with a 4xx other than
401/403/404 (413 included: never retried) are moved to the spool's rejected table, not
retried; a Core refusing many logs one warning per episode, with counts.

Durability: ``memory`` (default) keeps the fast path free of disk I/O; a hard kill loses
what is only in memory: items that had waited less than ``memory_window`` (plus the
writer's batch in progress, milliseconds), never more than ``memory_limit`` items. A
clean shutdown writes them to the spool within the grace period. ``write_ahead`` puts
every item through the spool first (one transaction per batch: group commit); a hard
kill loses at most the batch being committed, a few milliseconds of items. Either way a
committed batch survives a killed process; a power cut may take the last batches too
(WAL with ``synchronous=NORMAL``). README, "Durability windows", has the measured figures.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Literal

import attrs
import trio

from ._config import DeviceIdentity
from ._contract import encode_event, encode_telemetry, iso
from ._core import CoreClient, CoreLane
from ._errors import (
    CoreAuthRejected,
    CoreError,
    CoreIdentityUnknown,
    CoreRejected,
    CoreRouteNotFound,
    InvalidEvent,
    InvalidReading,
    SpoolError,
)
from ._health import Concern
from ._limits import MAX_PAYLOAD_BYTES
from ._logs import runtime_logger
from ._policy import RestartPolicy
from ._recovery import Recovery
from ._scheduler import Doorbell
from ._sink import EventRecord, Severity, TelemetryRecord
from ._spool import Rejection, Spool, SpoolRow

__all__ = [
    "LinkStatus",
    "Outbox",
    "OutboxSettings",
    "OutboxStats",
    "open_outbox",
]

log = runtime_logger("runtime.outbox")

TELEMETRY = 0
EVENT = 1
#: Kind bit: the payload was encoded before the container id was known; fill it at send.
NEEDS_IDENTITY = 2

LinkState = Literal["unknown", "up", "down", "auth_rejected", "no_identity", "misrouted"]
Durability = Literal["memory", "write_ahead"]

MiB = 1024 * 1024
#: Delivered spool rows are deleted in batches of about this many, or after this wait.
DELETE_BATCH = 500
DELETE_WAIT = 0.05
#: Refused payloads waiting for the spool while it cannot be written; beyond, the oldest go.
REJECTS_HELD = 1000
#: A refusal episode that goes on is summarised in the log this often.
REFUSALS_LOG_EVERY = 300.0
#: A lane holding at most this many items is never called congested, however long its head
#: has waited: a slow answer or two must not send devices to the spool.
LANE_FLOOR = 256
#: Rows appended in one spool transaction at most, unless half ``spill_limit`` waits (then
#: all of it). The writer's thread binds a batch holding the GIL, so a bigger one stalls
#: the trio thread (and the lanes) as long; but past capacity each commit also costs a
#: dozen waits for the GIL, and small ones could not keep up: readings were dropped.
COMMIT_ROWS = 8192
#: Past capacity (the lanes overflowed to the spool in the last ``PAST_CAPACITY_FOR``
#: seconds), scheduled polls wait once more items than this wait for the spool's writer
#: (``Outbox.admit``): each reading made to be spilled costs the core the lanes need. At
#: 25,000 (half ``spill_limit``, the rule otherwise) the rate delivered fell to a fifth of
#: capacity at 2.4 times it; at 512 it held (docs/benchmarks.md, "Past capacity, fourth
#: round").
DEFER_AFTER = 512
PAST_CAPACITY_FOR = 1.0
#: At most this many bytes of bodies go out in one pipelined write.
PIPELINE_BYTES = 1024 * 1024
#: A lane writes several items at once only once more than this many wait on it: it has
#: fallen behind. Below, one request per write costs more CPU (a third more a reading at
#: 1,000/s), but a Core that stops answering mid-write cuts off one request rather than a
#: batch, whose later requests it may still process and store after the lane gave up on
#: the connection (sent again: duplicates; a reliability test found them).
PIPELINE_AFTER = 8


class IdSource:
    """Telemetry ids: 32 hex digits, a random 64-bit prefix drawn once per outbox (so once
    per process start) and a 64-bit counter. About 0.7 us an id against 1.4 us for
    ``os.urandom(16).hex()`` (a system call per reading); ids of two starts share a prefix
    with probability 2**-64, and within a start the counter never repeats."""

    __slots__ = ("_count", "prefix")

    def __init__(self) -> None:
        self.prefix = os.urandom(8).hex()
        self._count = itertools.count()

    def __call__(self) -> str:
        return f"{self.prefix}{next(self._count):016x}"


#: The most rows one replay read may ask for (``OutboxSettings.replay_batch``).
REPLAY_BATCH_MAX = 2000


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
    """Items waiting to be written to the spool. A slow disk fills it, or a process so far
    past capacity that its spool writer hardly gets to run; past it the oldest waiting
    items are dropped (and counted). While the disk fails outright, at most
    ``memory_limit`` wait."""
    durability: Durability = attrs.field(
        default="memory", validator=attrs.validators.in_(("memory", "write_ahead"))
    )
    memory_window: float = attrs.field(default=1.0, validator=_positive)
    """With ``memory`` durability: an item that has waited on a lane for between half
    and all of this (seconds) is written to the spool behind it, so a hard kill loses at
    most about this much."""
    spool_max_bytes: int = attrs.field(default=512 * MiB, validator=_positive)
    spool_max_age: float = attrs.field(default=7 * 24 * 3600.0, validator=_positive)
    retry: RestartPolicy = attrs.field(
        factory=lambda: RestartPolicy(initial_delay=0.5, max_delay=5.0)
    )
    """Backoff between attempts at one item while Core fails (full jitter). The cap is
    short because it bounds how long a Core that is back goes unnoticed; a lane probes
    at most once per wait, and an overloaded Core slows us with ``Retry-After``."""
    probe: RestartPolicy = attrs.field(
        factory=lambda: RestartPolicy(initial_delay=1.0, max_delay=60.0)
    )
    """After 401/403 (or a 404 on telemetry): the wait before each probe, doubling from
    ``initial_delay`` to ``max_delay`` (no jitter), unless the auth changes first."""
    slow_retry: float = attrs.field(default=300.0, validator=_positive)
    """The longest ``Retry-After`` honoured."""
    replay_batch: int = attrs.field(
        default=1000, validator=[_positive, attrs.validators.le(REPLAY_BATCH_MAX)]
    )
    """Spooled rows read back at once; the spool is read only while the lanes are short
    (fewer items than this in memory, none of them waiting over half ``queue_wait``), so
    replay takes only the capacity new items leave. At most ``REPLAY_BATCH_MAX``: a read
    comes back as one SQLite value, which must stay under SQLite's 1 GB even when every
    row is ``MAX_PAYLOAD_BYTES``."""
    queue_wait: float = attrs.field(default=0.5, validator=_positive)
    """While a lane's oldest item has waited longer than this (seconds; and the lane holds
    over ``LANE_FLOOR`` items), the lane's new items go to the spool, and so do their
    devices' later ones until those are read back (each device's order holds). So past
    capacity only the overflow goes to the spool, what is delivered skips the disk and
    waits about this long, and the backlog is read back, oldest first, as soon as the
    lanes have room."""
    backlog_age_limit: float = attrs.field(default=30.0, validator=_positive)
    """``/health`` says degraded (``delivery_backlog``) while the oldest undelivered item
    is older than this many seconds."""
    pipeline: int = attrs.field(default=1024, validator=_positive)
    """Requests a lane writes at once on its connection (HTTP/1.1 pipelining) while Core
    answers; at most one per device, so a failed item never lets a later one of the same
    device through. 1 turns pipelining off. Deep, because a lane exchanges once every few
    turns of the event loop, and past capacity a turn is long (devices make readings in it
    too, as many as came due since the last): what a lane may send in one exchange bounds
    the rate. Below capacity a write holds only what came since the last one. A large
    batch is read while it is written, so its answers need not fit in socket buffers."""
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
    next_probe: str | None = None
    """ISO-8601 UTC: when delivery next tries Core after 401/403 or 404 (else None)."""


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
    rejected_kept: int = 0
    """Refused payloads in the spool's rejected table (capped in count, bytes and age)."""
    rejected_bytes: int = 0
    written_behind: int = 0
    """Items written to the spool after waiting ``memory_window`` on a lane."""
    spool_error: dict[str, Any] | None = None
    """Why the spool cannot be written now (``code``: spool_disk_full, spool_io_error,
    spool_busy, spool_corrupt), None while it can."""
    recovery: dict[str, Any] | None = None
    """What was lost since the last run: a damaged spool moved aside and salvaged, or
    one that vanished or was emptied (``_recovery.Recovery``); None if nothing."""
    configs_tracked: int = 0
    """Configs whose delivery figures are held: those running, and removed ones until
    nothing of theirs is queued."""
    backlog_age: float | None = None
    """Seconds since the oldest undelivered item was made (in memory, waiting for the
    spool or in it; to within the write-behind's quarter window); None when none is."""
    deferred: int = 0
    """Scheduled polls put off because the spool's writer was behind (``Outbox.admit``)."""

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


class _Item:
    __slots__ = (
        "created",
        "done",
        "due",
        "figures",
        "kind",
        "lane_key",
        "payload",
        "seq",
        "spooled",
    )

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
        self.lane_key = key
        self.created = created
        self.payload = body
        self.spooled = spooled
        """A row for it is committed to the spool."""
        self.done = False
        """Delivered or refused: it has left the outbox's memory for good."""
        self.due = 0.0
        """trio time from which it is written behind if still only in memory on a lane."""
        self.figures = figures
        """Its config's counters, looked up once when the item is made."""
        figures.queued += 1

    def row(self) -> SpoolRow:
        return SpoolRow(self.seq, self.kind, self.lane_key, self.created, self.payload)


class _Figures:
    """One config's delivery counts, for its line in /diagnostics."""

    __slots__ = (
        "accepted",
        "config_id",
        "delivered",
        "last_delivered",
        "on_disk",
        "queued",
        "removed",
    )

    def __init__(self, config_id: str, *, removed: bool = False, on_disk: int = 0) -> None:
        self.config_id = config_id
        self.accepted = 0
        self.delivered = 0
        self.last_delivered: float | None = None
        self.queued = 0
        """Items of this config in memory (on a lane or waiting for the spool)."""
        self.on_disk = on_disk
        """Rows of this config only in the spool (not yet read back)."""
        self.removed = removed
        """The config is gone (or not running yet, for rows found in the spool at start):
        forget these figures once nothing of it is queued, in memory or on disk."""

    @property
    def idle(self) -> bool:
        return self.queued <= 0 and self.on_disk <= 0


class _Lane:
    __slots__ = ("attempt", "auth_version", "batch", "bell", "queue", "woken_early")

    def __init__(self) -> None:
        self.queue: deque[_Item] = deque()
        self.bell = Doorbell()
        self.attempt = 0
        self.batch: list[_Item] = []
        """The items out on the connection now: always the head of ``queue``."""
        self.auth_version = 0
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
        self._window = settings.memory_window
        self._seq = spool.max_seq
        self._memory = 0
        self._pending: deque[_Item] = deque()
        self._deletes: list[tuple[int, int]] = []
        self._rejects: deque[Rejection] = deque()
        # Items put on lanes only in memory, in that order (each knows when it is due to
        # be written behind); those picked for the next commit; and the trio time as the
        # ager last read it (the hot path reads this rather than the clock).
        self._young: deque[_Item] = deque()
        self._behind: list[_Item] = []
        self._clock = 0.0
        # Rows written behind (seq: size): on disk, and also on a lane until their delete
        # commits. Replay skips them, the cap neither takes nor counts them.
        self._resident: dict[int, int] = {}
        self._resident_bytes = 0
        # Every spooled row with seq <= cursor is on a lane or gone; rows above are on disk.
        self._cursor = 0
        self._disk_max = spool.max_seq
        # Everything goes to the spool while Core is not known to answer (or write_ahead);
        # otherwise only the overflow, and each device whose items are still on disk.
        self._spilling = self._write_ahead
        # The newest seq each device (lane key) put in the spool: until the cursor passes
        # it, that device's new items follow it there, to keep its order.
        self._held: dict[str, int] = dict(spool.newest_by_key)
        self._lane_count = len(self._lanes)
        self._queue_wait = settings.queue_wait
        self._defer_at = max(1, settings.spill_limit // 2)
        self._overflowed_at = -math.inf
        self._ids = IdSource()
        self._committing = False
        self._spool_lock = trio.Lock()
        self._writer_bell = Doorbell()
        self._reader_bell = Doorbell()
        self._ager_bell = Doorbell()
        self._progress = trio.lowlevel.ParkingLot()
        self._recovered = trio.Event()
        self._link: LinkStatus = LinkStatus("unknown", time.time(), None)
        self._probe_attempt = 0
        self._probe_at: float | None = None
        self._spool_error: dict[str, Any] | None = None
        self._spool_failing: SpoolError | None = None
        self._read_failing = False
        self._overflow_warned = False
        self._refusals: dict[str, int] = {}
        self._refusals_since = self._refusals_logged = 0.0
        # Every config with rows in the spool has figures, to know when to forget them.
        self._devices: dict[str, _Figures] = {
            config_id: _Figures(config_id, removed=True, on_disk=rows)
            for config_id, rows in spool.rows_by_config.items()
        }
        self.recovery: Recovery | None = spool.recovery
        self.accepted = self.delivered = self.retried = self.spooled = 0
        self.replayed = self.dropped = self.rejected = self.written_behind = 0
        self.deferred = 0

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
            self._ids(),
            record.device_id,
            identity.config_id,
            container_id,
            identity.integration_id or self._client.integration_id,
            metrics,
            units,
            iso(record.observed_at),
        )
        if len(body) > MAX_PAYLOAD_BYTES:
            raise InvalidReading(
                f"telemetry of {record.device_id!r} is {len(body)} bytes encoded, over "
                f"MAX_PAYLOAD_BYTES ({MAX_PAYLOAD_BYTES}); it was not sent",
                hint="Report fewer or smaller readings per payload.",
            )
        kind = TELEMETRY if container_id else TELEMETRY | NEEDS_IDENTITY
        self._accept(kind, identity.config_id, record.device_id, body)

    def event(self, record: EventRecord) -> None:
        kind, config_id, device_id, body = self._encode_event(record)
        if len(body) > MAX_PAYLOAD_BYTES:
            raise InvalidEvent(
                f"event {record.event_type!r} is {len(body)} bytes encoded, over "
                f"MAX_PAYLOAD_BYTES ({MAX_PAYLOAD_BYTES}); it was not sent",
                hint="Send a summary or a reference instead of the whole data.",
            )
        self._accept(kind, config_id, device_id, body)

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
        figures = self._devices.get(config_id)
        if figures is None:
            figures = self._devices[config_id] = _Figures(config_id)
        elif figures.removed:
            figures.removed = False  # configured again before its figures were forgotten
        figures.accepted += 1
        key = config_id + "\x00" + device_id
        item = _Item(self._seq, kind, key, time.time(), body, False, figures)
        if urgent:  # past the spool's cap, so the cap cannot take it
            self._enqueue(item)
        elif self._spilling or kind & NEEDS_IDENTITY:
            self._spill(item)
        elif key in self._held and self._still_held(key):
            self._spill(item)  # older items of this device wait in the spool
        elif self._memory >= self._limit:
            self._spill(item, overflow=True)
        else:
            lane = self._lanes[zlib.crc32(key.encode()) % self._lane_count]
            queue = lane.queue
            if len(queue) > LANE_FLOOR and self._waited(queue[0]) > self._queue_wait:
                self._spill(item, overflow=True)  # past capacity
            else:
                self._enqueue(item, lane)

    def admit(self) -> bool:
        """Whether a scheduled poll may run now (each refusal counts in ``deferred``).

        Not past capacity (the lanes overflowed in the last ``PAST_CAPACITY_FOR``
        seconds, which happens only while Core answers) with more than ``DEFER_AFTER``
        items waiting for the spool's writer: every reading made now costs the core the
        lanes need (made, spilled, read back), where a poll put off costs one sample.
        Otherwise (Core down, ``write_ahead``, a device's older items still on disk) the
        spool is the way on, and polls wait only from half of ``spill_limit``, where a
        reading would be dropped at the limit after it was made. While the disk fails,
        polls go on: waiting would not bring it back."""
        if self._spool_failing is not None:
            return True
        waiting = len(self._pending)
        if waiting < self._defer_at and (
            waiting < DEFER_AFTER or trio.current_time() - self._overflowed_at >= PAST_CAPACITY_FOR
        ):
            return True
        self.deferred += 1
        return False

    def _still_held(self, key: str) -> bool:
        if self._held[key] > self._cursor:
            return True
        del self._held[key]  # its rows were all read back: it is live again
        return False

    def _waited(self, item: _Item) -> float:
        """Seconds since ``item`` was put on its lane."""
        return trio.current_time() - (item.due - self._window)

    def lane_of(self, key: str) -> int:
        """The lane (sender) a device's items travel on: stable across processes."""
        return zlib.crc32(key.encode()) % self._lane_count

    def _enqueue(self, item: _Item, lane: _Lane | None = None) -> None:
        if lane is None:
            lane = self._lanes[self.lane_of(item.lane_key)]
        lane.queue.append(item)
        self._memory += 1
        lane.bell.ring()
        young = self._young
        if not young:  # the ager was idle: its clock is stale
            self._clock = trio.current_time()
        item.due = self._clock + self._window
        if not item.spooled:  # in memory only: written behind if it waits too long
            if not young:
                self._ager_bell.ring()
            young.append(item)

    def _spill(self, item: _Item, *, overflow: bool = False) -> None:
        """Put ``item`` on the list for the spool. Its device's later items follow it
        there (``_held``) unless it is a reading that overflowed while Core answers:
        holding those would send every later reading through the disk, which costs more
        than sending it, so past capacity the rate would fall instead of holding."""
        if not overflow or item.kind & EVENT:
            self._held[item.lane_key] = item.seq
        if overflow:
            self._overflowed_at = trio.current_time()
        pending = self._pending
        failing = self._spool_failing is not None
        cap = self._limit if failing else self.settings.spill_limit
        while len(pending) >= cap:
            # The disk cannot keep up (or is failing): the oldest unwritten item goes.
            self._release(pending.popleft())
            self._dropped(1, "disk" if failing else "slow_disk")
        pending.append(item)
        if failing:
            self._feed()
        self._writer_bell.ring()

    def _release(self, item: _Item, *, to_disk: bool = False) -> None:
        """``item`` left memory: for good (delivered, refused, dropped), or ``to_disk``
        (only its spool row is left, to be read back)."""
        figures = item.figures
        figures.queued -= 1
        if to_disk:
            figures.on_disk += 1
        elif figures.removed and figures.idle:
            self._prune(figures)

    def _prune(self, figures: _Figures) -> None:
        if self._devices.get(figures.config_id) is figures:
            del self._devices[figures.config_id]

    def _feed(self) -> None:
        """While the spool cannot be written: hand what waits for it to the lanes, oldest
        first, as long as Core answers and nothing older is left on disk."""
        if (
            self._committing
            or self._link.state not in ("up", "unknown")
            or (self._cursor < self._disk_max and not self._read_failing)
        ):
            return
        pending = self._pending
        while pending and self._memory < self._limit:
            self._enqueue(pending.popleft())

    # -- config lifecycle ----------------------------------------------------------------

    def forget(self, config_id: str) -> None:
        """The config is removed: drop its figures once nothing of it is queued."""
        figures = self._devices.get(config_id)
        if figures is None:
            return
        figures.removed = True
        if figures.idle:
            del self._devices[config_id]

    # -- what health shows -------------------------------------------------------------

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

    def stats_recovery(self) -> dict[str, Any] | None:
        """What was lost from the spool since the last run (``OutboxStats.recovery``)."""
        return self.recovery.to_dict() if self.recovery else None

    @property
    def tracked_configs(self) -> int:
        """Configs with delivery figures held (the running ones and those still queued)."""
        return len(self._devices)

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
            in_flight=sum(len(lane.batch) for lane in self._lanes),
            queue_depth=self._memory + len(self._pending),
            spool_depth=self._spool.depth,
            spool_bytes=self._spool.bytes,
            spool_oldest_age=None if oldest is None else max(0.0, time.time() - oldest),
            durability=self.settings.durability,
            link=link,
            rejected_kept=self._spool.rejected,
            rejected_bytes=self._spool.rejected_bytes,
            written_behind=self.written_behind,
            spool_error=self._spool_error if self._spool_failing else None,
            recovery=self.stats_recovery(),
            configs_tracked=len(self._devices),
            backlog_age=self.backlog_age(),
            deferred=self.deferred,
        )

    def backlog_age(self) -> float | None:
        """Seconds since the oldest undelivered item was made, None when nothing waits.

        Read from the spool's oldest row (which includes what it handed to the lanes and
        what was written behind), the waiting list, and each lane's head: memory-only
        items older than the write-behind window are on disk too."""
        oldest = self._spool.oldest_created
        candidates = [lane.queue[0].created for lane in self._lanes if lane.queue]
        if self._pending:
            candidates.append(self._pending[0].created)
        if oldest is not None:
            candidates.append(oldest)
        if not candidates:
            return None
        return max(0.0, time.time() - min(candidates))

    def concerns(self) -> list[Concern]:
        """Why delivery is not healthy now; empty while it is."""
        found: list[Concern] = []
        failing = self._spool_failing
        if failing is not None:
            found.append(
                Concern(
                    failing.code,
                    f"The delivery spool cannot be written: {failing.message}",
                    failing.hint,
                )
            )
        age = self.backlog_age()
        limit = self.settings.backlog_age_limit
        if age is not None and age > limit:
            found.append(
                Concern(
                    "delivery_backlog",
                    f"The oldest undelivered reading is {age:.0f} s old (over {limit:g} s); "
                    f"{self._memory + len(self._pending)} items in memory, "
                    f"{self._spool.depth} rows in the spool",
                    "Core takes fewer readings than the devices make, or is not taking "
                    "them: see delivery.link and the CPU of this process. The backlog is "
                    "kept (spool) and delivered oldest first once Core keeps up again.",
                )
            )
        state = self._link.state
        if state not in ("up", "unknown"):
            error = self._link.last_error or {}
            found.append(
                Concern(
                    f"core_link_{state}",
                    f"Core link {state}: {error.get('message', 'no answer')}",
                    str(error.get("hint") or "Check that Core is running and reachable."),
                )
            )
        return found

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
        next_probe = self._next_probe_iso() if state in ("auth_rejected", "misrouted") else None
        if state != self._link.state:
            if state == "up":
                log.info("Core link up (was %s)", self._link.state)
                self._probe_attempt, self._probe_at = 0, None
            else:
                log.warning("Core link %s: %s", state, error)
            self._link = LinkStatus(state, time.time(), last, next_probe)
            self._spilling = state != "up" or self._write_ahead
            if state == "up":
                self._recovered.set()
                self._reader_bell.ring()
                if self._spool_failing is not None:
                    self._feed()
            elif self._recovered.is_set():
                self._recovered = trio.Event()
        elif last is not self._link.last_error or next_probe != self._link.next_probe:
            self._link = attrs.evolve(self._link, last_error=last, next_probe=next_probe)

    def _next_probe_iso(self) -> str | None:
        if self._probe_at is None:
            return None
        wall = time.time() + max(0.0, self._probe_at - trio.current_time())
        return datetime.fromtimestamp(wall, UTC).isoformat()

    # -- tasks ---------------------------------------------------------------------------

    async def _run_lane(self, lane: _Lane) -> None:
        """One sender: its own connection to Core, and one cancel scope (``guard``) that
        bounds every exchange on it for as long as no exchange times out."""
        async with self._client.lane() as link:
            while True:
                with trio.CancelScope() as guard:
                    link.guard = guard
                    await self._serve_lane(lane, link, guard)
                link.guard = None
                # The guard fired. With nothing out (the lane was idle past the deadline of
                # its last exchange) that means nothing; else Core did not answer in time.
                if lane.batch:
                    failure = self._settle(lane, link.timed_out())
                    if failure is not None:
                        await self._failed(lane, *failure)

    async def _serve_lane(self, lane: _Lane, link: CoreLane, guard: trio.CancelScope) -> None:
        while True:
            while not lane.queue:
                await lane.bell.wait()
            if guard.cancel_called:
                return  # its deadline passed while the lane was idle: take a fresh one
            batch = self._take(lane, link.pipelined)
            lane.auth_version = self._client.auth_version
            try:
                bodies = [(bool(item.kind & EVENT), self._body(item)) for item in batch]
            except CoreIdentityUnknown as err:
                results: list[CoreError | None] = [err]
            else:
                results = await link.post(bodies)
            failure = self._settle(lane, results)
            if failure is not None:
                link.disarm()
                await self._failed(lane, *failure)

    def _take(self, lane: _Lane, pipelined: bool) -> list[_Item]:
        """The items to send now, from the head of the lane: several while Core answers
        and the connection allows it (at most ``pipeline``, ``PIPELINE_BYTES`` of bodies,
        and one per device); only the head while the lane retries or probes."""
        queue = lane.queue
        first = queue[0]
        batch = [first]
        depth = self.settings.pipeline
        if (
            pipelined
            and depth > 1
            and len(queue) > PIPELINE_AFTER
            and not lane.attempt
            and self._link.state == "up"
        ):
            keys = {first.lane_key}
            size = len(first.payload)
            for item in itertools.islice(queue, 1, depth):
                key = item.lane_key
                if key in keys or size > PIPELINE_BYTES:
                    break
                keys.add(key)
                size += len(item.payload)
                batch.append(item)
        lane.batch = batch
        return batch

    def _body(self, item: _Item) -> bytes:
        return self._with_identity(item.payload) if item.kind & NEEDS_IDENTITY else item.payload

    def _settle(
        self, lane: _Lane, results: list[CoreError | None]
    ) -> tuple[_Item, CoreError] | None:
        """Book the answers to the batch out on ``lane``: delivered and refused items
        leave it; the rest go back to its head, in order. Returns the first failure that
        calls for a wait (a retry, a probe), if any."""
        batch, lane.batch = lane.batch, []
        queue = lane.queue
        for _ in batch:
            queue.popleft()
        kept: list[_Item] = []
        failure: tuple[_Item, CoreError] | None = None
        delivered = spooled = False
        for index, item in enumerate(batch):
            err = results[index] if index < len(results) else None
            if index >= len(results):
                kept.append(item)  # not answered: behind a failure, sent again later
            elif err is None:
                self._delivered(item)
                delivered = True
                spooled |= item.spooled
            elif isinstance(err, CoreRejected) or (
                isinstance(err, CoreRouteNotFound) and item.kind & EVENT
            ):
                # Never accepted as it is; an events route Core lacks must not hold up
                # the telemetry behind it (telemetry's 404 is probed slowly instead: a
                # Core still starting may not have mounted its routes yet).
                self._park(item, err)
            else:
                if failure is None:
                    failure = (item, err)
                kept.append(item)
        if kept:
            queue.extendleft(reversed(kept))
        if spooled:
            self._writer_bell.ring()
        if delivered:
            self._after_delivery(lane, clean=failure is None)
        if self._progress:
            self._progress.unpark_all()
        return failure

    def _delivered(self, item: _Item) -> None:
        self._memory -= 1
        self.delivered += 1
        item.done = True
        figures = item.figures
        figures.delivered += 1
        figures.last_delivered = time.time()
        self._release(item)
        if item.spooled:
            self._deletes.append((item.seq, len(item.payload)))

    def _after_delivery(self, lane: _Lane, *, clean: bool) -> None:
        if clean:
            lane.attempt = 0
            lane.woken_early = False
        if self._link.state != "up":
            self._set_link("up", None)
        if self._refusals:
            self._refusals_ended()
        if self._cursor < self._disk_max:
            self._reader_bell.ring()
        if self._spool_failing is not None:
            self._feed()

    def _with_identity(self, body: bytes) -> bytes:
        container_id = self._client.container_id
        if container_id is None:
            raise CoreIdentityUnknown("no container id known yet; the item is held")
        payload = json.loads(body)
        payload["container_id"] = container_id
        payload["integration_id"] = payload.get("integration_id") or self._client.integration_id
        return json.dumps(payload, separators=(",", ":")).encode()

    async def _failed(self, lane: _Lane, item: _Item, err: CoreError) -> None:
        """Wait as ``err`` (about ``item``, now the lane's head) calls for: a retry's
        backoff, or the shared probe schedule after 401/403/404."""
        if err.retryable:
            await self._retry_later(lane, err)
            return
        state: LinkState
        if isinstance(err, CoreIdentityUnknown):
            state, wait = "no_identity", float("inf")
        else:
            # 401/403, or 404 / an answer we cannot follow: Core is misconfigured, not down.
            state = "auth_rejected" if isinstance(err, CoreAuthRejected) else "misrouted"
            wait = self._probe_wait()
        self._set_link(state, err)
        if self._client.auth_version != lane.auth_version:
            self._probe_attempt, self._probe_at = 0, None
            return  # the auth changed while the request was out: try the new one now
        with trio.move_on_after(wait):
            await self._client.auth_changed()
            self._probe_attempt, self._probe_at = 0, None

    def _probe_wait(self) -> float:
        """Seconds to the shared next probe, scheduling it (1 s doubling to 60 s) if none
        is pending: every lane refused in one round waits for the same moment."""
        now = trio.current_time()
        if self._probe_at is None or self._probe_at <= now:
            self._probe_at = now + self.settings.probe.ceiling(self._probe_attempt)
            self._probe_attempt += 1
        return self._probe_at - now

    async def _retry_later(self, lane: _Lane, err: CoreError) -> None:
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

    def _park(self, item: _Item, err: CoreError) -> None:
        """Core answered: this payload will never be accepted as it is. Keep it in the
        rejected table and let the rest flow."""
        self._memory -= 1
        self.rejected += 1
        item.done = True
        self._release(item)
        rejects = self._rejects
        if self._spool_failing is not None and len(rejects) >= REJECTS_HELD:
            rejects.popleft()  # counted as rejected already; only its body is not kept
        rejects.append(Rejection(item.row(), item.spooled, time.time(), err.status, err.message))
        self._writer_bell.ring()
        self._set_link("up", err)
        self._refused(err)

    def _refused(self, err: CoreError) -> None:
        """One warning when Core starts refusing payloads, a summary when it stops (or
        every few minutes while it goes on): never one line per payload."""
        now = time.monotonic()
        key = str(err.status) if err.status is not None else err.code
        if not self._refusals:
            self._refusals_since = self._refusals_logged = now
            log.warning(
                "Core refused a payload; kept in the spool's rejected table: %s (further "
                "refusals are counted until Core accepts one)",
                err,
            )
        self._refusals[key] = self._refusals.get(key, 0) + 1
        if now - self._refusals_logged >= REFUSALS_LOG_EVERY:
            self._refusals_logged = now
            log.warning("Core is still refusing payloads: %s", self._refusal_counts(now))

    def _refusals_ended(self) -> None:
        log.warning(
            "Core accepted a payload again after refusing some: %s; the refused ones are in "
            "the spool's rejected table",
            self._refusal_counts(time.monotonic()),
        )
        self._refusals = {}

    def _refusal_counts(self, now: float) -> str:
        total = sum(self._refusals.values())
        by = ", ".join(f"{n} x {key}" for key, n in sorted(self._refusals.items()))
        return f"{total} refused in {now - self._refusals_since:.0f} s ({by})"

    async def _run_writer(self) -> None:
        failures = 0
        while True:
            await self._writer_bell.wait()
            failing = self._spool_failing is not None
            if (
                not (self._pending or self._rejects or self._behind)
                and len(self._deletes) < DELETE_BATCH
                and not failing
            ):
                # Only deliveries to forget: gather them, one transaction per batch.
                await trio.sleep(DELETE_WAIT)
            try:
                if failing:
                    # Small writes (and deletes) may still fit on a full disk: only a
                    # batch's worth of new pages says that it is back.
                    await self._spool.probe()
                    self._spool_recovered()
                await self._commit()
            except SpoolError as err:
                failures += 1
                self._spool_failed(err)
                await trio.sleep(self.settings.retry.ceiling(failures))
                self._writer_bell.ring()
            else:
                failures = 0

    def _spool_failed(self, err: SpoolError) -> None:
        """A spool write failed: say why once per episode, keep delivering from memory."""
        self._spool_error = {**err.to_dict(), "at": time.time()}
        if self._spool_failing is None or type(self._spool_failing) is not type(err):
            log.error(
                "cannot write the delivery spool (%s): %s; delivering from memory while Core "
                "answers, retrying the spool with backoff",
                err.code,
                err,
            )
        self._spool_failing = err
        # What waits for the disk beyond the failing limit goes now, oldest first.
        while len(self._pending) > self._limit:
            self._release(self._pending.popleft())
            self._dropped(1, "disk")
        self._feed()

    def _spool_recovered(self) -> None:
        log.warning("the delivery spool takes writes again (%s is over)", self._spool_failing)
        self._spool_failing = None
        self._spool_error = None
        self._read_failing = False
        self._overflow_warned = False
        self._reader_bell.ring()

    async def _commit(self, *, final: bool = False) -> None:
        if not (self._pending or self._deletes or self._rejects or self._behind):
            return
        # One spool operation at a time: a replay read must not run between the moment a
        # commit learns what is protected (the cursor) and the moment it trims.
        async with self._spool_lock:
            await self._commit_locked(final)
        self._reader_bell.ring()
        if self._pending:  # more than one transaction's worth waited
            self._writer_bell.ring()

    async def _commit_locked(self, final: bool) -> None:
        pending = self._pending
        take = len(pending)
        if take < self.settings.spill_limit // 2:  # else dropping is near: a stall is cheaper
            take = min(take, COMMIT_ROWS)
        items = [pending.popleft() for _ in range(take)]
        # All that is due to be written behind, whatever waits besides: lanes hold at most
        # memory_limit items, and each one left out would outlast the durability window.
        behind = [item for item in self._behind if not (item.done or item.spooled)]
        self._behind = []
        deletes, rejects = self._deletes, list(self._rejects)
        if not (items or deletes or rejects or behind):
            return
        self._deletes = []
        self._rejects.clear()
        before = self._disk_max
        self._committing = True
        self._resident_add(behind)
        try:
            # Shielded: a commit is short, and its outcome must be known to keep counts true.
            with trio.CancelScope(shield=True):
                outcome = await self._spool.commit(
                    items + behind,
                    deletes,
                    rejects,
                    max_bytes=self.settings.spool_max_bytes + self._resident_bytes,
                    older_than=time.time() - self.settings.spool_max_age,
                    protect_upto=self._cursor,
                    protect=self._resident,
                )
        except BaseException:
            self._resident_drop(item.seq for item in behind)
            self._pending.extendleft(reversed(items))
            self._behind[:0] = behind
            self._deletes[:0] = deletes
            self._rejects.extendleft(reversed(rejects))
            raise
        finally:
            self._committing = False
        self.spooled += len(items)
        if self._resident:  # their rows are gone now: nothing left to keep replay from
            self._resident_drop(seq for seq, _ in deletes)
            self._resident_drop(rejection.row.seq for rejection in rejects)
        self._wrote_behind(behind)
        if self._progress:
            self._progress.unpark_all()
        if items:
            self._disk_max = max(self._disk_max, max(item.seq for item in items))
        if outcome.dropped:
            self._dropped_from_disk(outcome.dropped_by_config)
            self._dropped(outcome.dropped, "cap")
        if final or not items or self._cursor < before or outcome.dropped:
            for item in items:
                self._release(item, to_disk=True)  # the reader brings it back
            return
        # Every older row is on a lane already: hand the fresh rows over directly rather
        # than reading them back. (Not after a trim, which may have taken some of them;
        # the reader then reads whatever is left.)
        room = self._room(batch=False)
        for item in items[:room]:
            item.spooled = True
            self._enqueue(item)
        for item in items[room:]:
            self._release(item, to_disk=True)
        if room:
            self._cursor = items[min(room, len(items)) - 1].seq

    def _dropped_from_disk(self, by_config: Mapping[str, int]) -> None:
        for config_id, count in by_config.items():
            figures = self._devices.get(config_id)
            if figures is not None:
                figures.on_disk -= count
                if figures.removed and figures.idle:
                    self._prune(figures)

    def _wrote_behind(self, behind: list[_Item]) -> None:
        """Rows of items still on their lanes are on disk now: never replay them, and
        delete them once delivered (at once for those done while the commit ran)."""
        self.written_behind += len(behind)
        for item in behind:
            if item.done:
                self._deletes.append((item.seq, len(item.payload)))
            else:
                item.spooled = True
        if behind:
            self._writer_bell.ring()

    def _resident_add(self, items: list[_Item]) -> None:
        resident = self._resident
        for item in items:
            size = len(item.payload)
            resident[item.seq] = size
            self._resident_bytes += size

    def _resident_drop(self, seqs: Iterable[int]) -> None:
        resident = self._resident
        for seq in seqs:
            size = resident.pop(seq, None)
            if size is not None:
                self._resident_bytes -= size

    def _room(self, *, batch: bool = True) -> int:
        """How many spooled items the lanes may take now; only probes while Core is down.

        While Core answers, spooled items may fill memory up to ``low`` (the smaller of
        ``replay_batch`` and half ``memory_limit``), never more, and none while a lane is
        congested (over ``LANE_FLOOR`` items, its head waiting over half ``queue_wait``):
        the backlog gets what new items leave of the capacity and never crowds them out
        (which would send their devices to the spool too). With ``batch``, none until
        memory is down to half of ``low``, so replay reads the spool in batches rather
        than one row per delivery.
        """
        if self._link.state not in ("up", "unknown"):
            return max(0, len(self._lanes) - self._memory)
        low = max(1, min(self._limit // 2, self.settings.replay_batch))
        if self._memory > (low // 2 if batch else low):
            return 0
        half = self._queue_wait / 2
        for lane in self._lanes:
            queue = lane.queue
            if len(queue) > LANE_FLOOR and self._waited(queue[0]) > half:
                return 0
        return max(0, low - self._memory)

    async def _run_reader(self) -> None:
        failures = 0
        while True:
            await self._reader_bell.wait()
            try:
                while self._cursor < self._disk_max and self._room() > 0:
                    async with self._spool_lock:
                        await self._replay_batch()
            except SpoolError as err:
                failures += 1
                self._read_failing = True
                self._spool_failed(err)
                await trio.sleep(self.settings.retry.ceiling(failures))
                self._reader_bell.ring()
                continue
            failures = 0
            if (
                self._cursor >= self._disk_max
                and not self._pending
                and not self._committing
                and self._spool.depth == 0
            ):
                self._held.clear()  # nothing of any device is on disk
                self._overflow_warned = False

    async def _replay_batch(self) -> None:
        room = self._room()
        if room <= 0 or self._cursor >= self._disk_max:
            return
        upto = self._disk_max
        limit = min(room, self.settings.replay_batch)
        rows = await self._spool.read_after(self._cursor, limit)
        resident = self._resident
        for row in rows:
            if row.seq in resident:
                continue  # written behind: the item is on its lane already
            config_id = row.lane_key.partition("\x00")[0]
            figures = self._devices.get(config_id)
            if figures is None:  # cannot be: every config with rows on disk has figures
                figures = self._devices[config_id] = _Figures(config_id, removed=True)
            figures.on_disk -= 1
            self._enqueue(
                _Item(row.seq, row.kind, row.lane_key, row.created, row.payload, True, figures)
            )
            self.replayed += 1
        last = rows[-1].seq if rows else self._cursor
        # A short read returned every row committed before it ran: the cursor moves past
        # all of them, and never below what was handed out.
        self._cursor = last if len(rows) == limit else max(self._cursor, upto, last)
        self._read_failing = False

    async def _run_ager(self) -> None:
        """Write behind what has waited on a lane for about ``memory_window`` (between
        half and all of it: the clock it stamps items with is a quarter window coarse);
        wakes four times per window, and only while something is young."""
        young, slack = self._young, self._window / 4
        while True:
            while not young:
                await self._ager_bell.wait()
            now = self._clock = trio.current_time()
            picked = self._behind
            horizon = now + slack
            while young and young[0].due <= horizon:
                item = young.popleft()
                if not (item.done or item.spooled):
                    picked.append(item)
            if picked:
                self._writer_bell.ring()
            await trio.sleep(slack)

    def _dropped(self, count: int, cause: Literal["cap", "slow_disk", "disk"]) -> None:
        self.dropped += count
        if self._progress:
            self._progress.unpark_all()
        if self._overflow_warned:
            return  # once per episode: while the disk fails this runs for every new item
        self._overflow_warned = True
        if cause == "cap":
            why = "delivery spool full"
            hint = (
                "Core has been unreachable long enough to fill the spool; raise "
                "spool_max_bytes/spool_max_age or restore Core."
            )
        elif cause == "disk":
            why = f"the spool cannot be written ({self._spool_failing})"
            hint = (
                "Free space on the state directory's disk (or fix it): until then at most "
                "memory_limit items wait for the disk, the oldest dropped first."
            )
        else:
            why = "the spool's disk cannot keep up"
            hint = "Put the state directory on a faster disk or raise spill_limit."
        log.warning(
            "%s: dropping the oldest undelivered items (%d so far; the 'dropped' figure "
            "counts the rest; warned again after the episode ends)",
            why,
            count,
        )
        self.runtime_event(
            "runtime.delivery_dropped",
            {
                "dropped": count,
                "cause": cause,
                "spool_max_bytes": self.settings.spool_max_bytes,
                "spool_max_age": self.settings.spool_max_age,
                "hint": hint,
            },
            severity="warning",
        )

    def runtime_event(
        self, event_type: str, data: Mapping[str, Any], *, severity: Severity = "warning"
    ) -> None:
        """An event about the runtime itself (``device_id`` "runtime"), sent from memory
        ahead of any spill, so neither a full spool nor its cap can take it."""
        record = EventRecord(
            identity=DeviceIdentity(
                id="runtime",
                config_id="runtime",
                device_id="runtime",
                container_id=self._client.container_id,
                integration_id=self._client.integration_id,
            ),
            device_id="runtime",
            event_type=event_type,
            severity=severity,
            data=data,
            source="runtime",
        )
        self._accept(*self._encode_event(record), urgent=True)

    def report_recovery(self, recovery: Recovery) -> None:
        """Make a loss found at start-up loud: one error event with the counts (the log
        line was written when it was found). The spool's own shows in ``stats()``."""
        role = "spool" if recovery.role == "spool" else "ledger"
        self.runtime_event(f"runtime.{role}_recovered", recovery.to_dict(), severity="error")

    async def _flush(self) -> None:
        """Write everything still only in memory to the spool (at shutdown)."""
        self._behind = []
        for lane in self._lanes:
            self._pending.extend(item for item in lane.queue if not item.spooled)
            lane.queue.clear()
        self._memory = 0
        while self._pending or self._deletes or self._rejects:
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

    On entry the spool is opened (a damaged one is moved aside and salvaged, and the loss
    reported) and anything left in it is replayed first. On exit the senders stop and
    whatever is still in memory is written to the spool, within
    ``settings.shutdown_grace`` seconds: it is delivered on the next start.
    """
    settings = settings or OutboxSettings()
    spool = await Spool.open(spool_path)
    outbox = Outbox(client, spool, settings, rng)
    if spool.recovery is not None:
        outbox.report_recovery(spool.recovery)
    try:
        async with trio.open_nursery() as nursery:
            for lane in outbox._lanes:
                nursery.start_soon(outbox._run_lane, lane)
            nursery.start_soon(outbox._run_writer)
            nursery.start_soon(outbox._run_reader)
            if not outbox._write_ahead:
                nursery.start_soon(outbox._run_ager)
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
