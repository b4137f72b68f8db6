"""Shared sources: one connection per broker and topic set, routed to the devices' actors.

A *source* is a named connection that yields envelopes: today an MQTT subscription to a
PiPhi source stream (``piphi/sources/<source>/packets``, docs/contract.md, MQTT source
topics), where a bridge such as rtl_433 publishes every radio packet it hears::

    {"source": "rtl433", "received_at": "2026-11-22T10:00:00.250+00:00",
     "model": "Acurite-Tower", "device_hint": {"model": "Acurite-Tower", "id": 1234,
     "channel": "A"}, "packet": {"temperature_C": 21.4, ...}, "metadata": {...}}

Before the hub, each device's actor held its own connection and parsed every packet, so
200 sensors were 200 connections and 200 parses per packet. The ``SourceHub`` holds one
connection per declared source for the runtime's lifetime, parses each payload once and
routes it by its ``device_hint`` through one dict to the inbox of the actor that claimed
that device. A hint nobody claims costs that lookup plus an entry in a bounded LRU, which
``/discover`` offers as candidates so a user can add a sensor the radio has heard.

Every source runs in its own task in the hub's nursery, which ``open_sources()`` opens
around the actor nursery (``open_runtime``), so actors never outlive their sources' task
and the sources close after the last actor has stopped. A session that fails or ends is
reconnected with capped exponential backoff and full jitter; while a source is down
``/health`` says ``degraded`` (``source_down``), and each device's own silence is still
reported by its actor as unavailability.

Inboxes are bounded and never block the hub: when an actor falls behind, its oldest
packet is dropped and counted, so one slow actor never holds up the others.
"""

from __future__ import annotations

import abc
import functools
import json
import logging
import math
import random
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import unquote, urlsplit

import attrs
import trio

from ._contract import iso
from ._errors import PiPhiError, SourceNotDeclared, error_code, errors_beside_cancellation
from ._health import Concern
from ._logs import protect
from ._policy import RestartPolicy

if TYPE_CHECKING:
    from moat.lib.mqtt import MQTTPublishPacket

    from ._redact import SecretValues
    from ._settings import Settings

__all__ = [
    "DEFAULT_MQTT_URL",
    "DEFAULT_TOPIC",
    "MqttSource",
    "Source",
    "SourceHint",
    "SourceHub",
    "SourceInbox",
    "SourcePacket",
    "open_sources",
    "parse_received_at",
]

log = logging.getLogger("runtime.sources")

#: What a source yields: a raw payload (parsed by the hub) or an already parsed envelope.
Payload = bytes | bytearray | memoryview | str | Mapping[str, Any]
SourceState = Literal["connecting", "connected", "down"]

#: The PiPhi source stream rtl_433 bridges publish to (docs/contract.md).
DEFAULT_TOPIC = "piphi/sources/rtl433/packets"
#: Where an ``MqttSource`` without a URL connects, unless ``PIPHI_MQTT_URL`` says.
DEFAULT_MQTT_URL = "mqtt://127.0.0.1:1883"
#: Packets an actor's inbox holds before the oldest is dropped.
INBOX_CAPACITY = 64
#: Backoff between reconnects: full jitter under a capped exponential (seconds).
RECONNECT_INITIAL_DELAY = 0.5
RECONNECT_MAX_DELAY = 30.0
#: Hints heard but claimed by no config, kept for ``/discover`` (least recently heard go).
UNCLAIMED_LIMIT = 512

_MISSING_MQTT = (
    "MqttSource needs moat-lib-mqtt, the optional [mqtt] extra: pip install 'piphi-runtime[mqtt]'"
)


def parse_received_at(value: object) -> datetime | None:
    """An envelope's ``received_at`` as an aware datetime: ISO-8601 (no zone means UTC) or
    epoch seconds. None when absent or unreadable (a report is then stamped on arrival)."""
    if isinstance(value, str):
        try:
            stamp = datetime.fromisoformat(value)
        except ValueError:
            return None
        return stamp if stamp.utcoffset() is not None else stamp.replace(tzinfo=UTC)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    return None


def hint_text(value: object) -> str | None:
    """Ids and channels compare as text: rtl_433 sends ``1234`` and ``"A"`` alike."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


# -- values --------------------------------------------------------------------------------


@attrs.frozen
class SourceHint:
    """Which device's packets an actor claims: a model and an id, and optionally one
    channel (None: every channel) and one envelope ``source`` (None: any)."""

    model: str
    id: str
    channel: str | None = None
    source: str | None = None

    @classmethod
    def of(
        cls,
        model: str,
        id: str | int,
        channel: str | int | None = None,
        source: str | None = None,
    ) -> SourceHint:
        model_text, id_text = hint_text(model), hint_text(id)
        if not model_text or not id_text:
            raise ValueError(f"a source hint needs a model and an id, got {model!r}, {id!r}")
        return cls(model_text, id_text, None if channel is None else hint_text(channel), source)

    @property
    def key(self) -> tuple[str, str]:
        return (self.model, self.id)

    def accepts(self, channel: str | None, source: object) -> bool:
        return (self.channel is None or channel == self.channel) and (
            self.source is None or source == self.source
        )

    def describe(self) -> str:
        channel = f" channel {self.channel}" if self.channel is not None else ""
        return f"{self.model} id {self.id}{channel}"


@attrs.frozen
class SourcePacket:
    """One envelope routed to an actor. ``packet`` and ``metadata`` are the envelope's
    own objects, shared by every actor it is routed to: read them, do not change them."""

    source: str | None
    """The envelope's ``source`` (``rtl433``)."""
    received_at: datetime | None
    """When the bridge heard it (None: the envelope did not say)."""
    model: str
    device_hint: Mapping[str, Any]
    packet: Mapping[str, Any]
    metadata: Mapping[str, Any]
    connection: str
    """The name of the hub's source it came through."""


# -- sources -------------------------------------------------------------------------------


class Source(abc.ABC):
    """A named connection that yields envelopes; the hub owns its lifetime.

    ``session()`` connects (and subscribes) on entry and yields an async iterator of
    payloads; it raises on trouble, and leaving it closes the connection politely. The hub
    bounds the entry by ``connect_timeout``, gives a polite close ``stop_grace`` on
    shutdown, and reconnects with backoff whenever a session fails or ends. A session
    that yields nothing for ``idle_timeout`` seconds (None: never) is reopened at once,
    without counting as an outage: a link that died without a word (a broker host gone,
    a NAT entry expired) looks exactly like a quiet stream.
    """

    kind: ClassVar[str] = "source"
    name: str
    connect_timeout: float = 10.0
    stop_grace: float = 1.0
    idle_timeout: float | None = None

    @abc.abstractmethod
    def session(self) -> AbstractAsyncContextManager[AsyncIterator[Payload]]:
        """Connect; yield the payloads until the connection ends or fails."""

    def where(self) -> str:
        """Where it connects, for messages: never a secret."""
        return self.name

    def secrets(self) -> Iterable[str]:
        """Values to mask in every answer and log line while the runtime runs."""
        return ()

    def bind(self, settings: Settings) -> Source:
        """This source with the runtime's settings applied (default: itself)."""
        return self


class MqttSource(Source):
    """An MQTT subscription to one or more topics of a PiPhi source stream.

    ``url`` is ``mqtt://[user[:password]@]host[:port]`` (``mqtts://`` for TLS); or give
    ``host``/``port``/``username``/``password``. With neither, the runtime's
    ``PIPHI_MQTT_URL`` (``Settings.mqtt_url``) is used, else ``mqtt://127.0.0.1:1883``.
    moat-lib-mqtt 0.8.7 sends no keep-alive pings of its own, so a dead link shows only
    as silence: after ``idle_timeout`` (600 s) without a packet the session is reopened.
    Packets are events, so the subscription is QoS 0 and asks for no retained message (a
    retained packet would be replayed on every reconnect and taken for a sign of life).

    The client is moat-lib-mqtt (the ``[mqtt]`` extra), imported when a session opens.
    """

    kind: ClassVar[str] = "mqtt"

    def __init__(
        self,
        url: str | None = None,
        *,
        topics: Sequence[str] = (DEFAULT_TOPIC,),
        name: str = "mqtt",
        host: str | None = None,
        port: int | None = None,
        username: str | None = None,
        password: str | None = None,
        connect_timeout: float = 10.0,
        stop_grace: float = 1.0,
        idle_timeout: float | None = 600.0,
    ) -> None:
        if isinstance(topics, str):
            topics = (topics,)
        if not topics or not all(isinstance(t, str) and t for t in topics):
            raise ValueError(f"MqttSource needs at least one topic, got {topics!r}")
        if not (connect_timeout > 0 and stop_grace > 0) or not (
            idle_timeout is None or idle_timeout > 0
        ):
            raise ValueError(
                "MqttSource connect_timeout, stop_grace and idle_timeout must be positive"
            )
        if not name or not isinstance(name, str):
            raise ValueError(f"MqttSource needs a name, got {name!r}")
        self.name = name
        self.topics = tuple(topics)
        self.connect_timeout = connect_timeout
        self.stop_grace = stop_grace
        self.idle_timeout = idle_timeout
        self.url = url
        self.ssl = False
        self.host, self.port = host, port
        self.username, self.password = username, password
        if url is not None:
            self._apply_url(url)

    def _apply_url(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp"):
            raise ValueError(
                f"MqttSource url must start mqtt:// or mqtts://, got {parts.scheme or url!r}"
            )
        self.ssl = parts.scheme == "mqtts"
        self.host = self.host or parts.hostname or "127.0.0.1"
        try:
            port = parts.port
        except ValueError:
            raise ValueError("MqttSource url has an invalid port") from None
        self.port = self.port or port or (8883 if self.ssl else 1883)
        if parts.username and self.username is None:
            self.username = unquote(parts.username)
        if parts.password and self.password is None:
            self.password = unquote(parts.password)

    def bind(self, settings: Settings) -> Source:
        if self.host is not None:
            return self
        return MqttSource(
            settings.mqtt_url or DEFAULT_MQTT_URL,
            topics=self.topics,
            name=self.name,
            username=self.username,
            password=self.password,
            connect_timeout=self.connect_timeout,
            stop_grace=self.stop_grace,
            idle_timeout=self.idle_timeout,
        )

    def where(self) -> str:
        scheme = "mqtts" if self.ssl else "mqtt"
        host, port = self.host or "127.0.0.1", self.port or 1883
        return f"{scheme}://{host}:{port} {' '.join(self.topics)}"

    def secrets(self) -> Iterable[str]:
        return (self.password,) if self.password else ()

    def __repr__(self) -> str:
        return f"MqttSource({self.name!r}, {self.where()!r})"

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncIterator[Payload]]:
        try:
            from moat.lib.mqtt import QoS, RetainHandling
        except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
            raise ModuleNotFoundError(_MISSING_MQTT, name=exc.name) from exc
        for name in ("moat.lib.mqtt", "moat.lib.mqtt.async_client"):
            protect(logging.getLogger(name))  # its debug log shows the CONNECT password
        client_class = refusing_mqtt_client()
        async with (
            client_class(
                self.host or "127.0.0.1",
                self.port or 1883,
                ssl=self.ssl,
                username=self.username,
                password=self.password,
                # moat-lib-mqtt 0.8.7 never pings unless the broker sets Server Keep
                # Alive, so any keep-alive here gets a quiet subscriber dropped.
                keep_alive=0,
            ) as client,
            client.subscribe(
                *self.topics, qos=QoS.AT_MOST_ONCE, retain_handling=RetainHandling.NO_RETAINED
            ) as subscription,
        ):
            yield _payloads(subscription)


async def _payloads(subscription: AsyncIterator[MQTTPublishPacket]) -> AsyncIterator[Payload]:
    async for message in subscription:
        yield message.payload


@functools.cache
def refusing_mqtt_client() -> Any:
    """moat-lib-mqtt's client, failing its entry when the broker refuses the login.

    moat-lib-mqtt 0.8.7 takes any CONNACK as success and only the next operation fails,
    with the broker's reason lost; this raises ``MQTTConnectFailed(reason_code)`` instead
    (``_handle_packet`` is the client's private per-packet hook, hence the ``<0.9``
    bound; ``actors.mqtt_source`` uses it too). Made on first use, so the runtime imports
    without the ``[mqtt]`` extra."""
    from moat.lib.mqtt import MQTTConnAckPacket, MQTTConnectFailed, MQTTPacket, ReasonCode
    from moat.lib.mqtt.async_client import AsyncMQTTClient

    class RefusingClient(AsyncMQTTClient):
        async def _handle_packet(self, packet: MQTTPacket) -> None:
            if (
                isinstance(packet, MQTTConnAckPacket)
                and packet.reason_code is not ReasonCode.SUCCESS
            ):
                raise MQTTConnectFailed(packet.reason_code)
            await super()._handle_packet(packet)

    return RefusingClient


# -- inboxes -------------------------------------------------------------------------------


class SourceInbox:
    """One actor's packets: bounded, dropping the oldest when full (counted in
    ``dropped``), so the hub never waits for an actor. Iterate it (``async for``) or
    ``await get()``; one consumer at a time.

    A deque and a parking lot rather than a trio memory channel: a channel cannot drop
    its oldest item, and the hub must never block on a full one.
    """

    __slots__ = ("_lot", "_queue", "capacity", "delivered", "dropped", "hint", "owner")

    def __init__(self, hint: SourceHint, owner: object, capacity: int = INBOX_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"an inbox holds at least one packet, got {capacity!r}")
        self.hint = hint
        self.owner = owner
        self.capacity = capacity
        self.delivered = 0
        self.dropped = 0
        self._queue: deque[SourcePacket] = deque()
        self._lot = trio.lowlevel.ParkingLot()

    def __len__(self) -> int:
        return len(self._queue)

    def put(self, packet: SourcePacket) -> None:
        """Never blocks: a full inbox loses its oldest packet."""
        queue = self._queue
        if len(queue) >= self.capacity:
            queue.popleft()
            self.dropped += 1
        queue.append(packet)
        self.delivered += 1
        if self._lot:
            self._lot.unpark()

    async def get(self) -> SourcePacket:
        """The oldest waiting packet, waiting for one if none is."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._queue:
            await trio.lowlevel.cancel_shielded_checkpoint()
        while not self._queue:
            await self._lot.park()
        return self._queue.popleft()

    def __aiter__(self) -> SourceInbox:
        return self

    async def __anext__(self) -> SourcePacket:
        return await self.get()


# -- the hub -------------------------------------------------------------------------------


@attrs.define(eq=False)
class _Heard:
    """A hint heard with no claim: what ``/discover`` offers."""

    model: str
    id: str
    channel: str | None
    source: str | None
    connection: str
    first_seen: float
    last_seen: float
    packets: int
    sample: Any
    metadata: Any


@attrs.define(eq=False)
class _Link:
    """One source's connection and its figures."""

    source: Source
    state: SourceState = "connecting"
    since: float = attrs.field(factory=time.time)
    down_since: float | None = None
    last_error: dict[str, Any] | None = None
    next_attempt: float | None = None
    connects: int = 0
    attempts: int = 0
    packets: int = 0
    routed: int = 0
    unclaimed: int = 0
    malformed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.source.name,
            "kind": self.source.kind,
            "where": self.source.where(),
            "state": self.state,
            "since": self.since,
            "down_since": self.down_since,
            "last_error": self.last_error,
            "next_attempt": self.next_attempt,
            "connects": self.connects,
            "packets": self.packets,
            "routed": self.routed,
            "unclaimed": self.unclaimed,
            "malformed": self.malformed,
        }


class SourceHub:
    """Routes the envelopes of every declared source to the inboxes actors claim.

    Made by ``open_sources()``, which runs one task per source; a hub with no sources
    (an integration that declares none) is inert and refuses claims.
    """

    #: A session that stayed up this long resets the backoff.
    healthy_after: ClassVar[float] = 10.0

    def __init__(
        self,
        sources: Sequence[Source] = (),
        *,
        rng: random.Random | None = None,
        unclaimed_limit: int = UNCLAIMED_LIMIT,
        inbox_capacity: int = INBOX_CAPACITY,
        initial_delay: float | None = None,
        max_delay: float | None = None,
    ) -> None:
        names = [s.name for s in sources]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"sources must have distinct names; {', '.join(twice)} is repeated")
        self.links = [_Link(source) for source in sources]
        self._backoff = RestartPolicy(
            initial_delay=initial_delay or RECONNECT_INITIAL_DELAY,
            max_delay=max_delay or RECONNECT_MAX_DELAY,
        )
        self.inbox_capacity = inbox_capacity
        self.unclaimed_limit = unclaimed_limit
        self.unclaimed_evicted = 0
        self._rng = rng or random.Random()
        self._routes: dict[tuple[str, str], list[SourceInbox]] = {}
        self._claims: dict[int, list[SourceInbox]] = {}
        self._heard: OrderedDict[tuple[str, str, str | None], _Heard] = OrderedDict()
        self._dropped_released = 0

    # -- claims ----------------------------------------------------------------------------

    def claim(self, owner: object, hint: SourceHint, *, capacity: int | None = None) -> SourceInbox:
        """The inbox of ``owner`` (an actor) for ``hint``, made on first use and kept until
        ``release(owner)``: packets heard while the actor backs off wait there, bounded.
        Claiming another hint adds a second inbox; claiming the same one returns the first."""
        if not self.links:
            raise SourceNotDeclared(
                f"packets for {hint.describe()} were asked for, but the integration declares "
                "no source"
            )
        owned = self._claims.setdefault(id(owner), [])
        for inbox in owned:
            if inbox.hint == hint:
                return inbox
        inbox = SourceInbox(hint, owner, capacity or self.inbox_capacity)
        owned.append(inbox)
        self._routes.setdefault(hint.key, []).append(inbox)
        heard = self._heard
        for key in [k for k in heard if k[:2] == hint.key]:
            if hint.accepts(key[2], heard[key].source):
                del heard[key]
        return inbox

    def release(self, owner: object) -> None:
        """Forget every claim of ``owner`` (an actor that stopped)."""
        for inbox in self._claims.pop(id(owner), ()):
            self._dropped_released += inbox.dropped
            routed = self._routes.get(inbox.hint.key)
            if routed is not None:
                routed[:] = [i for i in routed if i is not inbox]
                if not routed:
                    del self._routes[inbox.hint.key]

    def claimed(
        self,
        model: str,
        id: str,
        channel: str | None = None,
        source: str | None = None,
    ) -> bool:
        """Whether an actor claims this device's packets (from envelope ``source``)."""
        return any(i.hint.accepts(channel, source) for i in self._routes.get((model, id), ()))

    # -- routing ---------------------------------------------------------------------------

    def ingest(self, link: _Link, payload: Payload) -> None:
        """Parse one payload once and hand it to the inboxes that claim its device."""
        link.packets += 1
        if isinstance(payload, Mapping):
            envelope: Any = payload
        else:
            try:
                if isinstance(payload, memoryview):
                    payload = payload.tobytes()
                envelope = json.loads(payload)
            except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
                link.malformed += 1
                return
        hint = envelope.get("device_hint") if isinstance(envelope, Mapping) else None
        if not isinstance(hint, Mapping):
            link.malformed += 1
            return
        model = hint_text(hint.get("model")) or hint_text(envelope.get("model"))
        device = hint_text(hint.get("id"))
        if not model or device is None:
            link.malformed += 1
            return
        claims = self._routes.get((model, device))
        channel = hint_text(hint.get("channel"))
        source = envelope.get("source")
        if claims is not None:
            packet: SourcePacket | None = None
            for inbox in claims:
                if inbox.hint.accepts(channel, source):
                    if packet is None:
                        packet = _packet(envelope, hint, model, link.source.name)
                    inbox.put(packet)
            if packet is not None:
                link.routed += 1
                return
        link.unclaimed += 1
        self._heard_from(link, envelope, model, device, channel, source)

    def _heard_from(
        self,
        link: _Link,
        envelope: Mapping[str, Any],
        model: str,
        device: str,
        channel: str | None,
        source: object,
    ) -> None:
        key = (model, device, channel)
        now = time.time()
        heard = self._heard.get(key)
        if heard is None:
            heard = _Heard(
                model=model,
                id=device,
                channel=channel,
                source=source if isinstance(source, str) else None,
                connection=link.source.name,
                first_seen=now,
                last_seen=now,
                packets=0,
                sample=None,
                metadata=None,
            )
            self._heard[key] = heard
            if len(self._heard) > self.unclaimed_limit:
                self._heard.popitem(last=False)
                self.unclaimed_evicted += 1
        else:
            self._heard.move_to_end(key)
        heard.last_seen = now
        heard.packets += 1
        heard.sample = envelope.get("packet")
        heard.metadata = envelope.get("metadata")

    # -- what the routes read --------------------------------------------------------------

    @property
    def dropped(self) -> int:
        """Packets dropped from full inboxes, since the hub opened."""
        return self._dropped_released + sum(
            inbox.dropped for owned in self._claims.values() for inbox in owned
        )

    def concerns(self) -> list[Concern]:
        """``source_down`` for each source that is down (or reconnecting after failing)."""
        return [
            Concern(
                code="source_down",
                message=f"source {link.source.name!r} ({link.source.where()}) is down"
                + (f": {link.last_error['message']}" if link.last_error else ""),
                hint="Check that the broker runs and is reachable, and its credentials; the "
                "runtime reconnects by itself with backoff. Devices fed by it go unavailable "
                "after their silence_seconds.",
            )
            for link in self.links
            if link.down_since is not None
        ]

    def discovered(self) -> list[dict[str, Any]]:
        """Hints heard but claimed by no config, most recently heard first, in the shape
        of ``/discover``'s devices: enough to make a config that claims one."""
        found = []
        for heard in reversed(self._heard.values()):
            if self.claimed(heard.model, heard.id, heard.channel, heard.source):
                continue  # claimed since, by a claim that did not evict it
            hint = {"model": heard.model, "id": heard.id, "channel": heard.channel}
            suffix = f"-{heard.channel}" if heard.channel is not None else ""
            local_id = f"{heard.model}-{heard.id}{suffix}".lower().replace(" ", "-")
            found.append(
                {
                    "id": local_id,
                    "name": f"{heard.model} {heard.id}"
                    + (f" channel {heard.channel}" if heard.channel is not None else ""),
                    "model": heard.model,
                    "device_hint": hint,
                    "discovered_by": "source",
                    "source": heard.source,
                    "connection": heard.connection,
                    "first_seen": iso(heard.first_seen),
                    "last_seen": iso(heard.last_seen),
                    "packets": heard.packets,
                    "sample": heard.sample,
                    "metadata": heard.metadata,
                    "config": {"id": local_id, "device_hint": hint}
                    | ({"source": heard.source} if heard.source else {}),
                }
            )
        return found

    def figures(self) -> dict[str, Any]:
        """For ``/diagnostics`` and ``/metrics``."""
        return {
            "sources": [link.to_dict() for link in self.links],
            "claimed_hints": len(self._routes),
            "unclaimed_hints": len(self._heard),
            "unclaimed_evicted": self.unclaimed_evicted,
            "dropped": self.dropped,
        }

    # -- the sources' tasks ----------------------------------------------------------------

    async def run_source(self, link: _Link) -> None:
        """Keep one source connected for as long as the hub runs."""
        source = link.source
        attempt = 0
        while True:
            link.state, link.since, link.next_attempt = "connecting", time.time(), None
            link.attempts += 1
            opened, connects = trio.current_time(), link.connects
            error = await self._session(link)
            if isinstance(error, _SessionIdle):
                log.info("source %r: %s", source.name, error.message)
                continue
            if link.connects > connects and trio.current_time() - opened >= self.healthy_after:
                attempt = 0
            delay = self._backoff.delay(attempt, self._rng)
            attempt += 1
            now = time.time()
            link.state, link.since = "down", now
            first = link.down_since is None
            if first:
                link.down_since = now
            link.last_error = _error_record(error, now)
            link.next_attempt = now + delay
            # One warning per outage; its retries are at debug level.
            log.log(
                logging.WARNING if first else logging.DEBUG,
                "source %r (%s) is down: %s; reconnecting with backoff (next in %.2f s)",
                source.name,
                source.where(),
                link.last_error["message"],
                delay,
            )
            await trio.sleep(delay)

    async def _session(self, link: _Link) -> BaseException:
        """One connection, until it fails or ends; returns why it did. On cancellation
        the subscription is left politely within ``stop_grace``: cancelled outright,
        moat-lib-mqtt waits 2 s for an UNSUBACK its cancelled reader can no longer read
        (docs/design.md, MQTT), so the session runs shielded and only the receive loop
        sees the cancellation."""
        source = link.source
        receiving = trio.CancelScope()
        session = trio.CancelScope(shield=True)
        outcome: BaseException = _SessionEnded("the session ended")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._end_session_on_cancel, link, receiving, session)
            with session:
                try:
                    with trio.move_on_after(source.connect_timeout) as connecting:
                        async with source.session() as payloads:
                            connecting.deadline = math.inf
                            link.state, link.since = "connected", time.time()
                            link.connects += 1
                            link.down_since = link.last_error = None
                            log.info("source %r connected (%s)", source.name, source.where())
                            idle = False
                            with receiving:
                                idle = await self._receive(link, payloads)
                            if idle:
                                outcome = _SessionIdle(
                                    f"no payload for {source.idle_timeout:g} s; reopening "
                                    "the session in case the link died silently"
                                )
                    if connecting.cancelled_caught:
                        outcome = _SessionEnded(
                            f"no session accepted within {source.connect_timeout:g} s"
                        )
                except Exception as exc:
                    outcome = exc
                except BaseExceptionGroup as group:
                    outcome = errors_beside_cancellation(group)
            nursery.cancel_scope.cancel()
        return outcome

    async def _receive(self, link: _Link, payloads: AsyncIterator[Payload]) -> bool:
        """Route payloads until the session ends; True if it went idle instead."""
        idle = link.source.idle_timeout
        if idle is None:
            async for payload in payloads:
                self.ingest(link, payload)
            return False
        with trio.move_on_after(idle) as quiet:
            async for payload in payloads:
                self.ingest(link, payload)
                quiet.deadline = trio.current_time() + idle
            return False
        return True

    async def _end_session_on_cancel(
        self, link: _Link, receiving: trio.CancelScope, session: trio.CancelScope
    ) -> None:
        try:
            await trio.sleep_forever()
        finally:
            receiving.cancel()
            if link.state == "connected":
                grace = trio.current_time() + link.source.stop_grace
                session.deadline = min(session.deadline, grace)
            else:
                session.cancel()


class _SessionEnded(PiPhiError):
    code = "source_session_ended"
    default_hint = "The runtime reconnects by itself with backoff."


class _SessionIdle(_SessionEnded):
    code = "source_session_idle"


def _packet(
    envelope: Mapping[str, Any], hint: Mapping[str, Any], model: str, connection: str
) -> SourcePacket:
    packet = envelope.get("packet")
    metadata = envelope.get("metadata")
    source = envelope.get("source")
    return SourcePacket(
        source=source if isinstance(source, str) else None,
        received_at=parse_received_at(envelope.get("received_at")),
        model=model,
        device_hint=hint,
        packet=packet if isinstance(packet, Mapping) else {},
        metadata=metadata if isinstance(metadata, Mapping) else {},
        connection=connection,
    )


def _first(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


#: What an error that says nothing (an empty str()) means, by its class name.
_LOST = {"MQTTConnectionLost": "connection lost", "EndOfStream": "connection lost"}


def _error_record(error: BaseException, now: float) -> dict[str, Any]:
    first = _first(error)
    reason = getattr(first, "reason_code", None)
    if reason is not None and hasattr(reason, "name"):
        message = f"refused: {reason.name.lower().replace('_', ' ')}"
        hint = "Check the source's username, password and the broker's ACL for its topics."
    else:
        message = str(getattr(first, "message", None) or first) or _LOST.get(
            type(first).__name__, type(first).__name__
        )
        hint = getattr(first, "hint", None) or (
            "Check that the broker runs and is reachable; the runtime reconnects by itself."
        )
    return {"code": error_code(first), "message": message, "hint": hint, "at": now}


@asynccontextmanager
async def open_sources(
    sources: Sequence[Source] = (),
    *,
    settings: Settings | None = None,
    secrets: SecretValues | None = None,
    rng: random.Random | None = None,
    initial_delay: float | None = None,
    max_delay: float | None = None,
) -> AsyncIterator[SourceHub]:
    """Run ``sources`` (each bound to ``settings``) for the block's lifetime and yield the
    hub; leaving it closes every connection politely. Open it around the actors that
    claim from it, so they stop first. Source passwords join ``secrets``. The reconnect
    backoff is ``SourceHub``'s (0.5 s doubling to 30 s) unless the delays are given."""
    if settings is not None:
        sources = [source.bind(settings) for source in sources]
    hub = SourceHub(sources, rng=rng, initial_delay=initial_delay, max_delay=max_delay)
    if secrets is not None:
        for source in sources:
            for value in source.secrets():
                secrets.add(value)
    if not hub.links:
        yield hub
        return
    async with trio.open_nursery() as nursery:
        for link in hub.links:
            nursery.start_soon(hub.run_source, link, name=f"source {link.source.name}")
        try:
            yield hub
        finally:
            nursery.cancel_scope.cancel(reason="sources closing")
