"""The config-sync supervisor: the single owner of the set of running actors.

Core is the source of truth: each snapshot says which configs should run. ``ConfigSync``
diffs a snapshot against what runs, by config id and a hash of the validated config, and
touches only what differs. It spawns the added configs, restarts the changed ones (or
hands them to the actor's ``reconfigure()`` hook), and stops the removed ones and every
id in ``deleted_config_ids``. Unchanged actors see nothing, and Core sees no event for
them.

One reconciliation runs at a time, shielded from its caller's cancellation so it never
stops halfway. Snapshots that arrive while one runs coalesce: only the newest (highest
generation, latest on ties) is applied next, and the others answer ``stale_ignored``.

Which snapshot is stale: one whose generation is lower than the last applied one's,
unless it comes from another Core process (a different ``driver_pid``, or one where the
other had none: Core restarted and its counter started over) or Core made it later (a
newer ``updated_at``: Core restored from a backup). Either of those is applied and its
generation becomes the one to beat, so no generation, however large, can shut Core out
for ever. The last applied generation,
``driver_pid`` and ``updated_at`` are kept in the local copy, so the rule holds across
restarts. Snapshots without a generation (Core's config rows) are never stale.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from typing import Any, Literal

import attrs
import trio
from pydantic import SecretStr, ValidationError
from pydantic.alias_generators import to_camel

from ._actor import DeviceActor
from ._children import Child
from ._config import DeviceIdentity, RuntimeConfig, validate_config
from ._contract import ConfigSnapshot
from ._errors import ActorCallError, InvalidConfig
from ._health import AvailabilityReason
from ._logs import runtime_logger
from ._nursery import ActorNursery
from ._redact import SecretValues
from ._sink import EventRecord, Sink

__all__ = [
    "ApplyResult",
    "ConfigSnapshot",
    "ConfigSync",
    "Rejection",
    "RemoveResult",
    "SyncResult",
    "select_by_field",
]

log = runtime_logger("runtime.reconciler")

#: Configs handled between two yields to the scheduler during a reconciliation.
_YIELD_EVERY = 1024


ActorClass = type[DeviceActor[Any]]
Selector = Callable[[Mapping[str, Any]], ActorClass]
Change = Literal["restarted", "reconfigured"]


@attrs.frozen
class Rejection:
    """A config of a snapshot that was not applied, and why."""

    config_id: str | None
    code: str
    message: str
    errors: tuple[Mapping[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "config_id": self.config_id,
            "code": self.code,
            "message": self.message,
            "errors": list(self.errors),
        }


@attrs.frozen(kw_only=True)
class SyncResult:
    """What a snapshot did: everything the PiPhi sync response needs, plus timing."""

    status: Literal["synced", "stale_ignored"]
    generation: int | None
    reason: str | None
    container_id: str | None
    added: tuple[str, ...] = ()
    restarted: tuple[str, ...] = ()
    reconfigured: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    unchanged: int = 0
    rejected: tuple[Rejection, ...] = ()
    active_config_ids: tuple[str, ...] = ()
    note: str | None = None
    duration_ms: float = 0.0

    @property
    def applied(self) -> tuple[str, ...]:
        """Configs this snapshot started or changed."""
        return self.added + self.restarted + self.reconfigured

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "generation": self.generation,
            "reason": self.reason,
            "container_id": self.container_id,
            "applied": list(self.applied),
            "added": list(self.added),
            "restarted": list(self.restarted),
            "reconfigured": list(self.reconfigured),
            "removed": list(self.removed),
            "unchanged": self.unchanged,
            "skipped": [r.config_id for r in self.rejected],
            "rejected": [r.to_dict() for r in self.rejected],
            "active_config_ids": list(self.active_config_ids),
            "note": self.note,
            "duration_ms": round(self.duration_ms, 3),
        }


@attrs.frozen
class ApplyResult:
    """What applying one config did: ``added``, ``restarted``, ``reconfigured`` or ``unchanged``."""

    config_id: str
    action: Literal["added", "restarted", "reconfigured", "unchanged"]


@attrs.frozen
class RemoveResult:
    config_id: str
    removed: bool


@attrs.frozen
class _Origin:
    """Where a snapshot stands in Core's history: its generation, the Core process that
    sent it (``driver_pid``) and when Core made it (``updated_at``)."""

    generation: int | None = None
    driver_pid: str | None = None
    updated_at: datetime | None = None

    @classmethod
    def of(cls, snapshot: ConfigSnapshot) -> _Origin:
        pid = snapshot.driver_pid
        return cls(
            snapshot.generation, None if pid is None else str(pid), _moment(snapshot.updated_at)
        )

    def older_than(self, applied: _Origin) -> bool:
        """Whether a snapshot from here is stale against the one applied (module docstring):
        a lower generation is stale only if the same Core process sent it (the same
        ``driver_pid``, or none on both) and Core did not make it later."""
        if self.generation is None or applied.generation is None:
            return False
        if self.generation >= applied.generation or self.driver_pid != applied.driver_pid:
            return False
        return not (self.updated_at and applied.updated_at and self.updated_at > applied.updated_at)


def select_by_field(
    field: str, actors: Mapping[str, ActorClass], *, default: ActorClass | None = None
) -> Selector:
    """Choose the actor class of each config by the value of ``field`` (e.g. ``device_type``)."""
    camel = to_camel(field)
    choices = dict(actors)

    def select(config: Mapping[str, Any]) -> ActorClass:
        value = config.get(field, config.get(camel))
        chosen = choices.get(str(value)) if value is not None else None
        if chosen is not None:
            return chosen
        if default is not None:
            return default
        raise InvalidConfig(
            f"Config {config.get('id')!r} has {field}={value!r}; expected one of {sorted(choices)}",
            details={"config_id": config.get("id"), "field": field},
        )

    return select


@attrs.define
class _Desired:
    actor_class: ActorClass
    config: RuntimeConfig
    digest: str
    raw: tuple[Mapping[str, Any], tuple[str | None, str | None]]


class ConfigSync:
    """Reconciles configs into running actors in ``actors``; see the module docstring.

    ``select`` is the actor class for every config, or a function choosing one per config
    (see ``select_by_field``). Lifecycle events go to ``sink`` and to ``recent_events``.
    """

    def __init__(
        self,
        actors: ActorNursery,
        select: ActorClass | Selector,
        sink: Sink,
        *,
        history: int = 100,
        on_applied: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
        secrets: SecretValues | None = None,
        on_removed: Callable[[str], None] | None = None,
        around_reconcile: Callable[[], AbstractContextManager[None]] = nullcontext,
    ) -> None:
        """``on_applied`` receives the running set as a snapshot after every change (to
        keep a local copy for rehydration, see ``LocalCopy.save``); ``on_removed`` the
        config id (Core's ``config_id``) of each config removed, once its actor stopped
        and its ``device.deconfigured`` event was sent (to prune per-device state, see
        ``Outbox.forget``); ``secrets`` remembers every secret of every config validated
        (the runtime's, for its logs)."""
        self._secrets = secrets
        self._around_reconcile = around_reconcile
        self._actors = actors
        self._select = _fixed(select) if isinstance(select, type) else select
        self._sink = sink
        self._running: dict[str, _Desired] = {}  # config id -> what its actor runs
        self._lock = trio.Lock()
        self._submitted = 0
        self._newest: tuple[int, _Origin] = (0, _Origin())  # (ticket, origin) to apply next
        self._applied = _Origin()
        self._last_hash: str | None = None
        self.recent_events: deque[EventRecord] = deque(maxlen=history)
        self._on_applied = on_applied
        self._on_removed = on_removed

    @property
    def active_config_ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._running))

    @property
    def last_generation(self) -> int | None:
        """The generation of the last snapshot applied (None before any with one)."""
        return self._applied.generation

    # -- the three operations -------------------------------------------------------------

    async def apply_snapshot(self, data: ConfigSnapshot | Mapping[str, Any]) -> SyncResult:
        """Converge to ``data``. Raises InvalidConfig if the envelope itself is malformed;
        invalid configs inside it are reported in the result and skipped."""
        snapshot = parse_snapshot(data)
        origin = _Origin.of(snapshot)
        self._submitted += 1
        ticket = self._submitted
        if self._newest[0] == 0 or not origin.older_than(self._newest[1]):
            self._newest = (ticket, origin)
        async with self._lock:
            if self._newest[0] != ticket:
                return self._stale(snapshot, "superseded by a newer snapshot")
            self._newest = (0, _Origin())
            with trio.CancelScope(shield=True), self._around_reconcile():
                result = await self._reconcile(snapshot)
                if result.status == "synced" and result.note is None:
                    await self._persist()
        return result

    async def apply_config(self, data: RuntimeConfig | Mapping[str, Any]) -> ApplyResult:
        """Apply one config (``/config``): start it, restart it if it changed, else nothing.
        Raises InvalidConfig, leaving everything as it was."""
        raw = data.model_dump(exclude_unset=True) if isinstance(data, RuntimeConfig) else data
        desired = self._validate(raw)
        config_id = desired.config.id
        async with self._lock:
            with trio.CancelScope(shield=True):
                current = self._running.get(config_id)
                if current is not None and current.digest == desired.digest:
                    self._running[config_id] = desired  # same content; remember this form
                    result = ApplyResult(config_id, "unchanged")
                elif config_id not in self._running:
                    self._spawn(config_id, desired)
                    result = ApplyResult(config_id, "added")
                else:
                    how = await self._change_all({config_id: desired})
                    result = ApplyResult(config_id, how[config_id])
                if result.action != "unchanged":
                    await self._persist()
        return result

    async def remove(self, config_id: str) -> RemoveResult:
        """Stop and forget one config (``/deconfigure``); ``removed`` says if it ran."""
        async with self._lock:
            with trio.CancelScope(shield=True):
                running = config_id in self._running
                if running:
                    await self._stop_all([config_id])
                    await self._persist()
        return RemoveResult(config_id, removed=running)

    # -- reconciliation -------------------------------------------------------------------

    async def _reconcile(self, snapshot: ConfigSnapshot) -> SyncResult:
        started = time.perf_counter()
        origin, applied = _Origin.of(snapshot), self._applied
        if origin.older_than(applied):
            why = f"generation {origin.generation} is older than {applied.generation}"
            return self._stale(snapshot, why)
        same_hash = snapshot.config_hash is not None and snapshot.config_hash == self._last_hash
        if same_hash and origin.generation is not None and origin.generation == applied.generation:
            return self._result(snapshot, started, note="same generation and config_hash")

        desired: dict[str, _Desired | None] = {}  # None: identical to what runs
        scope = (snapshot.container_id, snapshot.integration_id)
        rejected: list[Rejection] = []
        for n, raw in enumerate(snapshot.configs):
            if n % _YIELD_EVERY == 0:
                await trio.lowlevel.checkpoint()  # a big snapshot must not stall the actors
            known = self._unchanged_id(raw, scope)
            if known is not None and known not in desired:
                desired[known] = None
                continue
            try:
                item = self._validate(_with_scope(raw, scope), raw, scope)
            except InvalidConfig as exc:
                config_id = raw.get("id") if isinstance(raw, Mapping) else None
                errors = tuple(exc.details.get("errors", ()))
                rejected.append(Rejection(_str_or_none(config_id), exc.code, exc.message, errors))
                continue
            if item.config.id in desired:
                duplicate = "listed twice; the first one applies"
                rejected.append(Rejection(item.config.id, "duplicate_config_id", duplicate))
                continue
            desired[item.config.id] = item
        deleted = {str(i) for i in snapshot.deleted_config_ids}
        for config_id in deleted & desired.keys():
            del desired[config_id]
            wins = "also listed in deleted_config_ids, which wins"
            rejected.append(Rejection(config_id, "deleted", wins))
        invalid_ids = {r.config_id for r in rejected if r.config_id not in deleted}

        # An invalid config leaves its running actor alone: a typo must not take a
        # working device down. Anything else that runs and is not desired is removed.
        running = self._running
        removed = [
            i for i in running if i not in desired and (i in deleted or i not in invalid_ids)
        ]
        fresh = {i: d for i, d in desired.items() if d is not None}
        added = [i for i in fresh if i not in running]
        changed = [i for i, d in fresh.items() if i in running and running[i].digest != d.digest]

        await self._stop_all(removed)
        how = await self._change_all({i: fresh[i] for i in changed})
        for n, config_id in enumerate(added):
            if n % _YIELD_EVERY == 0:
                await trio.lowlevel.checkpoint()
            self._spawn(config_id, fresh[config_id])
        # Unchanged in content but received in another form: remember the new form, so
        # the next identical snapshot takes the cheap path.
        running.update(fresh)
        if origin.generation is not None:  # Core's rows carry none: what was applied stands
            self._applied = origin
        self._last_hash = snapshot.config_hash
        return self._result(
            snapshot,
            started,
            added=tuple(added),
            restarted=tuple(i for i in changed if how[i] == "restarted"),
            reconfigured=tuple(i for i in changed if how[i] == "reconfigured"),
            removed=tuple(removed),
            unchanged=len(desired) - len(added) - len(changed),
            rejected=tuple(rejected),
        )

    def _unchanged_id(self, raw: Any, scope: tuple[str | None, str | None]) -> str | None:
        """The id of ``raw`` if it equals the raw config its running actor came from: then
        it needs no validation. A dict comparison costs about a microsecond, validation
        and hashing tens: this is what keeps a 1%-changed re-sync of 10k configs cheap."""
        if not isinstance(raw, Mapping):
            return None
        config_id = raw.get("id")
        current = self._running.get(config_id) if isinstance(config_id, str) else None
        return config_id if current is not None and current.raw == (raw, scope) else None

    def _validate(
        self,
        scoped: Any,
        raw: Any = None,
        scope: tuple[str | None, str | None] = (None, None),
    ) -> _Desired:
        """Validate ``scoped`` (``raw`` with the snapshot's scope filled in)."""
        if not isinstance(scoped, Mapping):
            raise InvalidConfig(f"A config must be an object, got {type(scoped).__name__}")
        actor_class = self._select(scoped)
        config = validate_config(actor_class.config_model, scoped, self._secrets)
        source = scoped if raw is None else raw
        return _Desired(actor_class, config, _digest(actor_class, config), (source, scope))

    def _spawn(self, config_id: str, desired: _Desired) -> None:
        self._actors.spawn(desired.actor_class, desired.config)
        self._running[config_id] = desired
        self._event("device.configured", desired.config.identity)

    async def _change_all(self, changed: Mapping[str, _Desired]) -> dict[str, Change]:
        """Reconfigure in place where the actor can and the class is the same; restart
        the rest (stop the old actor, then start a new one with the new config)."""
        how: dict[str, Change] = {}
        # A restarted device that was unavailable stays so, for Core, until its new actor
        # has data: one device.available then, not a second device.unavailable meanwhile.
        # Its children carry on likewise, stale ones included.
        unavailable: dict[str, AvailabilityReason] = {}
        children: dict[str, tuple[Child, ...]] = {}

        async def change(config_id: str, desired: _Desired) -> None:
            running = self._actors.get(config_id)
            if (
                running is not None
                and type(running.actor) is desired.actor_class
                and desired.actor_class.reconfigurable
            ):
                try:
                    await running.reconfigure(desired.config)
                except ActorCallError as exc:
                    running.actor.log.warning("reconfigure() failed (%s); restarting", exc.message)
                else:
                    how[config_id] = "reconfigured"
                    return
            if running is not None:
                await running.stop()
                if running.availability_reason is not None:
                    unavailable[config_id] = running.availability_reason
                children[config_id] = running.hand_over_children()
            how[config_id] = "restarted"

        async with trio.open_nursery() as nursery:
            for config_id, desired in changed.items():
                nursery.start_soon(change, config_id, desired)
        for config_id, desired in changed.items():
            if how[config_id] == "restarted":
                self._actors.spawn(
                    desired.actor_class,
                    desired.config,
                    unavailable=unavailable.get(config_id),
                    children=children.get(config_id, ()),
                )
            self._running[config_id] = desired
            self._event("device.reconfigured", desired.config.identity)
        return how

    async def _stop_all(self, config_ids: Iterable[str]) -> None:
        stopping = []
        async with trio.open_nursery() as nursery:
            for config_id in config_ids:
                self._running.pop(config_id, None)
                running = self._actors.get(config_id)
                if running is not None:
                    stopping.append(running.identity)
                    nursery.start_soon(running.stop)
        for identity in stopping:
            self._event("device.deconfigured", identity)
            if self._on_removed is not None:
                self._on_removed(identity.config_id)

    async def _persist(self) -> None:
        if self._on_applied is None:
            return
        configs = [_with_scope(*d.raw) for d in self._running.values()]
        applied = self._applied
        current = {
            "generation": applied.generation,
            "driver_pid": applied.driver_pid,
            "updated_at": None if applied.updated_at is None else applied.updated_at.isoformat(),
            "configs": configs,
        }
        try:
            await self._on_applied(current)
        except Exception:  # the change is made; failing to record it must not undo it
            log.exception("could not save the applied configs; rehydration may be stale")

    # -- results and events ---------------------------------------------------------------

    def _stale(self, snapshot: ConfigSnapshot, why: str) -> SyncResult:
        return self._result(snapshot, None, status="stale_ignored", note=why)

    def _result(
        self, snapshot: ConfigSnapshot, started: float | None, **changes: Any
    ) -> SyncResult:
        changes.setdefault("status", "synced")
        return SyncResult(
            generation=snapshot.generation,
            reason=snapshot.reason,
            container_id=snapshot.container_id,
            active_config_ids=self.active_config_ids,
            duration_ms=0.0 if started is None else (time.perf_counter() - started) * 1000,
            **changes,
        )

    def _event(self, event_type: str, identity: DeviceIdentity) -> None:
        record = EventRecord(
            identity=identity,
            device_id=identity.device_id,
            event_type=event_type,
            severity="info",
            data={"config_id": identity.config_id},
            source="config_sync",
        )
        self.recent_events.append(record)
        try:
            self._sink.event(record)
        except Exception:  # a sink must not raise; see Supervisor._deliver
            log.exception("the sink refused %s for %s", event_type, identity.config_id)


def _fixed(actor_class: ActorClass) -> Selector:
    def select(_config: Mapping[str, Any]) -> ActorClass:
        return actor_class

    return select


def parse_snapshot(data: ConfigSnapshot | Mapping[str, Any]) -> ConfigSnapshot:
    if isinstance(data, ConfigSnapshot):
        return data
    try:
        return ConfigSnapshot.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        raise InvalidConfig(
            "The config snapshot is malformed; nothing was applied",
            details={"errors": errors},
        ) from exc


def _moment(value: str | None) -> datetime | None:
    """``updated_at`` as Core sends it (ISO-8601, or Unix seconds), or None if unreadable."""
    if not value:
        return None
    try:
        return datetime.fromtimestamp(float(value), UTC)
    except (ValueError, OverflowError, OSError):
        pass
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _with_scope(raw: Any, scope: tuple[str | None, str | None]) -> Any:
    """Fill a config's container and integration ids from its snapshot when it has none."""
    if not isinstance(raw, Mapping):
        return raw
    filled = dict(raw)
    for (field, camel), value in zip(_SCOPE_FIELDS, scope, strict=True):
        if value is not None and filled.get(field) is None and filled.get(camel) is None:
            filled[field] = value
    return filled


# Spelled out: to_camel() is a regex call, and this runs for every config of every
# snapshot and of every saved copy.
_SCOPE_FIELDS = (("container_id", "containerId"), ("integration_id", "integrationId"))


def _digest(actor_class: ActorClass, config: RuntimeConfig) -> str:
    """A content hash of a validated config, secrets included, so a changed password is a
    changed config; with the actor class, so a device_type change restarts the actor."""
    body = json.dumps(config.model_dump(), sort_keys=True, default=_reveal, separators=(",", ":"))
    name = f"{actor_class.__module__}.{actor_class.__qualname__}"
    return hashlib.blake2b(f"{name}\n{body}".encode(), digest_size=16).hexdigest()


def _reveal(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return str(value)


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
