"""The class integration authors subclass, one per vendor: ``DeviceActor``.

An actor says how to talk to one device (setup, poll or run, teardown, commands); the
runtime decides when: its supervisor schedules polls, serializes commands with them,
restarts it after crashes and delivers what it emits. Actor methods never deal with
retries, timers or delivery.
"""

from __future__ import annotations

import inspect
import logging
import math
import typing
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from types import MappingProxyType
from typing import Any, ClassVar, Generic, Literal, TypeVar

import attrs

from ._capability import Capability
from ._config import MIN_POLL_INTERVAL, RuntimeConfig
from ._errors import ActorNotAttached, InvalidActor, InvalidEvent, InvalidReading
from ._logs import protect
from ._policy import RestartPolicy
from ._reading import MAX_NAME, Reading, json_problem, validate_readings
from ._sink import SEVERITIES, ActorOutputs, Severity
from ._sources import SourceHint, SourceHub, SourceInbox

__all__ = ["DEFAULT_MAX_CHILDREN", "CommandContext", "CommandSpec", "DeviceActor", "command"]

ConfigT = TypeVar("ConfigT", bound=RuntimeConfig)
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

_COMMAND_MARK = "__piphi_command__"


#: Children one actor keeps unless its class says otherwise (``max_children``).
DEFAULT_MAX_CHILDREN = 1000


@attrs.frozen
class CommandSpec:
    """A command an actor declares with ``@command``."""

    name: str
    method: str
    """The attribute name of the handler on the actor class."""
    description: str | None = None
    timeout: float | None = None
    idempotent: bool = False
    """Running it twice has the effect of running it once (``turn_on``, ``set_level``)."""
    takes_context: bool = False
    """The handler declares a second parameter, for the ``CommandContext``."""


@attrs.frozen(kw_only=True)
class CommandContext:
    """Who a command is for and where it came from, for a handler that asks for it
    (``async def turn_on(self, args, ctx: CommandContext)``).

    A gateway's commands reach its children through its actor: ``device_id`` says which
    device the command targets, the actor's own or one of its children's.
    """

    command: str
    """The command's name (one handler may serve several)."""
    config_id: str
    """The config the actor runs for (Core's config id)."""
    device_id: str
    """The target device: the actor's own ``device_id``, or a child's."""
    entity_id: str | None = None
    """The entity the request named, else the target's default entity id
    (``<config_id>:<device_id>``); None for a call made without a route."""
    idempotency_key: str | None = None
    """``X-PiPhi-Idempotency-Key`` (or the body's ``idempotency_key``), when sent."""
    correlation_id: str | None = None
    """The request's ``correlation_id`` (else its ``command_id``), for the vendor's logs."""
    parent_device_id: str | None = None
    """The actor's own ``device_id`` when the target is one of its children, else None."""

    @property
    def is_child(self) -> bool:
        """Whether the command targets one of the actor's children."""
        return self.parent_device_id is not None


def command(
    name: str,
    *,
    description: str | None = None,
    timeout: float | None = None,
    idempotent: bool = False,
) -> Callable[[F], F]:
    """Declare an actor method as the handler of command ``name``.

    The handler is ``async def handler(self, args: Mapping[str, Any]) -> Any``, or with a
    second parameter ``async def handler(self, args, ctx: CommandContext)`` to learn which
    device the command is for (a gateway's child) and the request's ids. The runtime runs
    it through the actor's mailbox, so it never overlaps a poll of the same device, and
    bounds it by ``timeout`` (default: the actor's ``command_timeout``).

    ``idempotent=True`` declares that running it twice is harmless: when a command times
    out or loses its connection after it may have reached the device, the reply's
    ``retryable`` is then true (sending it again is safe); otherwise false.
    """
    if not isinstance(name, str) or not name.strip():
        raise InvalidActor(f"@command needs a non-empty name, got {name!r}")
    if timeout is not None and not (timeout > 0 and math.isfinite(timeout)):
        raise InvalidActor(f"@command({name!r}) timeout must be a positive number, got {timeout!r}")
    if not isinstance(idempotent, bool):
        raise InvalidActor(f"@command({name!r}) idempotent must be True or False")

    def mark(handler: F) -> F:
        is_async = inspect.iscoroutinefunction(handler)  # not inline: it would narrow away F
        if not is_async:
            raise InvalidActor(f"@command({name!r}) must decorate an 'async def' method")
        spec = CommandSpec(
            name=name,
            method=handler.__name__,
            description=description,
            timeout=timeout,
            idempotent=idempotent,
            takes_context=_takes_context(name, handler),
        )
        setattr(handler, _COMMAND_MARK, spec)
        return handler

    return mark


def _takes_context(name: str, handler: Callable[..., Any]) -> bool:
    """Whether a handler declares a parameter for the context after ``self`` and the
    args: its signature decides, once, so a call costs nothing to work it out."""
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = list(inspect.signature(handler).parameters.values())
    named = [p for p in params if p.kind in positional]
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return True
    required = [p for p in named if p.default is inspect.Parameter.empty]
    if len(required) > 3 or len(named) < 2:
        raise InvalidActor(
            f"@command({name!r}) handler must take (self, args) or (self, args, ctx)",
            hint="async def handler(self, args: Mapping[str, Any], ctx: CommandContext) -> Any",
        )
    return len(named) >= 3


class _DeviceLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefixes every message with the device id and adds ids to the record's extras."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = self.extra or {}
        kwargs.setdefault("extra", {}).update(extra)
        return f"[{extra.get('device_id')}] {msg}", kwargs


class DeviceActor(Generic[ConfigT]):
    """One configured device. Subclass per vendor and override ``poll()`` or ``run()``.

    Polled devices override ``async poll() -> Iterable[Reading]``: the supervisor calls it
    at the config's ``poll_interval_seconds`` (else the class's ``poll_interval``) and
    sends each result to Core as one telemetry payload. Push devices override
    ``async run()`` instead, which runs until cancelled and calls ``self.report()``
    whenever data arrives.

    Raise ``DeviceUnavailable`` when the device is offline: the actor keeps its session
    and is retried with backoff. Raise ``ReconfigurationRequired`` when retrying cannot
    help until the config changes (refused credentials). Any other exception tears the
    session down (``teardown()``) and sets it up again (``setup()``) after a backoff, on
    this same instance, so attributes the actor keeps between polls survive unless
    ``setup()`` resets them.

    The config model is taken from the type parameter (``DeviceActor[PlugConfig]``) or
    from a ``config_model`` class attribute.
    """

    #: The pydantic model this actor's configs are validated against.
    config_model: ClassVar[type[RuntimeConfig]] = RuntimeConfig
    #: Seconds between polls when the config has no ``poll_interval_seconds``; at least
    #: ``MIN_POLL_INTERVAL`` (0.1 s), like the config's.
    poll_interval: ClassVar[float] = 30.0
    #: Seconds a poll may take before it counts as the device not answering.
    #: None means the poll interval, at most 10 s.
    poll_timeout: ClassVar[float | None] = None
    #: Seconds setup() may take before it counts as the device not answering.
    setup_timeout: ClassVar[float] = 30.0
    #: Default bound of a command, queueing included; ``@command(timeout=)`` overrides.
    command_timeout: ClassVar[float] = 10.0
    #: Grace period of teardown() when the actor is stopped or restarted.
    stop_timeout: ClassVar[float] = 5.0
    #: Seconds between setup() probes while the device needs reconfiguration (after a
    #: ReconfigurationRequired); a changed config from Core retries at once.
    reconfigure_probe_interval: ClassVar[float] = 900.0
    restart_policy: ClassVar[RestartPolicy] = RestartPolicy()
    #: What the device can do beyond its commands, for the manifest and its entities.
    capabilities: ClassVar[Mapping[str, Capability]] = MappingProxyType({})
    #: Seconds a child (a device this actor reports for with ``report(device_id=...)``)
    #: may go unheard before it is unavailable. None: three poll intervals, at least 60 s.
    child_stale_after: ClassVar[float | None] = None
    #: The most children kept per actor. Reports naming further new ones are delivered to
    #: Core but make no child (a warning says so once): an outsider can make a receiver
    #: hear arbitrary device ids.
    max_children: ClassVar[int] = DEFAULT_MAX_CHILDREN

    #: Filled in per subclass: the declared commands, by name.
    commands: ClassVar[Mapping[str, CommandSpec]] = MappingProxyType({})
    #: Filled in per subclass: "poll" or "push", None for an abstract intermediate class.
    mode: ClassVar[Literal["poll", "push"] | None] = None
    #: Filled in per subclass: whether it overrides reconfigure() (changed configs are
    #: then handed to the running actor instead of restarting it).
    reconfigurable: ClassVar[bool] = False

    config: ConfigT
    _sources: SourceHub | None
    """The runtime's shared sources, set by the nursery that spawned us."""
    _outputs: ActorOutputs | None
    """Where the output methods hand what they produce: the supervisor, while it runs us."""
    _log: logging.LoggerAdapter | None  # type: ignore[type-arg]

    def __init__(self, config: ConfigT) -> None:
        if self.mode is None:
            raise InvalidActor(f"{type(self).__name__} must override poll() or run()")
        if not isinstance(config, self.config_model):
            raise InvalidActor(
                f"{type(self).__name__} needs a {self.config_model.__name__}, "
                f"got {type(config).__name__}"
            )
        self.config = config
        self._outputs = None
        self._sources = None
        self._log = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        protect(logging.getLogger(cls.__module__))  # what its module logs, by mistake too
        if "config_model" not in cls.__dict__:
            for base in getattr(cls, "__orig_bases__", ()):
                args = typing.get_args(base)
                if args and isinstance(args[0], type) and issubclass(args[0], RuntimeConfig):
                    cls.config_model = args[0]
                    break
        for hook in ("setup", "poll", "run", "teardown", "reconfigure"):
            if hook in cls.__dict__ and not inspect.iscoroutinefunction(cls.__dict__[hook]):
                raise InvalidActor(f"{cls.__name__}.{hook}() must be 'async def'")
        polls = cls.poll is not DeviceActor.poll
        runs = cls.run is not DeviceActor.run
        if polls and runs:
            raise InvalidActor(f"{cls.__name__} overrides both poll() and run(); choose one")
        cls.mode = "poll" if polls else "push" if runs else None
        cls.reconfigurable = cls.reconfigure is not DeviceActor.reconfigure
        cls.commands = MappingProxyType(_collect_commands(cls))
        _check_children_settings(cls)
        poll_timeout = cls.poll_timeout
        if poll_timeout is not None and not (
            isinstance(poll_timeout, (int, float))
            and poll_timeout > 0
            and math.isfinite(poll_timeout)
        ):
            raise InvalidActor(
                f"{cls.__name__}.poll_timeout must be None or a positive number, "
                f"got {poll_timeout!r}",
                hint="Every poll needs a bound; use a long one rather than none.",
            )
        for attr in (
            "poll_interval",
            "setup_timeout",
            "command_timeout",
            "stop_timeout",
            "reconfigure_probe_interval",
        ):
            value = getattr(cls, attr)
            if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
                raise InvalidActor(
                    f"{cls.__name__}.{attr} must be a positive number, got {value!r}"
                )
        _check_poll_intervals(cls)

    # -- hooks: override these ---------------------------------------------------------

    async def setup(self) -> None:
        """Open the device session (connect, log in). Raise to be retried with backoff."""

    async def poll(self) -> Iterable[Reading]:
        """Read the device once; the readings become one telemetry payload."""
        raise NotImplementedError

    async def run(self) -> None:
        """For push devices: receive until cancelled, calling ``self.report()`` on data."""
        raise NotImplementedError

    async def teardown(self) -> None:
        """Close the session. Bounded by ``stop_timeout``, and runs even when cancelled."""

    async def reconfigure(self, config: ConfigT) -> None:
        """Optional: adopt a changed config in place, without a restart.

        Runs through the mailbox, never during a poll. Once it returns, ``self.config`` is
        the new config. Raise to have the runtime restart the actor with it instead.
        """
        raise NotImplementedError

    def entities(self) -> Sequence[Mapping[str, Any]]:
        """The entities this device exposes to Core; empty means the runtime's default."""
        return ()

    # -- output: call these from hooks; none of them blocks ----------------------------

    def publish_state(self, state: Mapping[str, Any]) -> None:
        """Merge ``state`` into this device's latest state (served by ``/state``)."""
        if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
            raise InvalidReading(
                f"publish_state() takes a mapping with string keys, got {type(state).__name__}"
            )
        problem = json_problem(state)
        if problem is not None:
            raise InvalidReading(
                f"publish_state() got {problem}",
                hint="State is served as JSON: use None for a value that is not known.",
            )
        self._attached().on_state(state)

    def report(
        self,
        readings: Iterable[Reading],
        device_id: str | None = None,
        timestamp: datetime | None = None,
    ) -> None:
        """Send ``readings`` as one telemetry payload, now.

        ``device_id`` reports for another device (a gateway's child sensor), which becomes
        a child of this config: its own ``/state`` entry, entity and availability (see
        ``child_stale_after``). It defaults to this actor's device. ``timestamp`` is when
        the vendor observed the values, if it says; it must be timezone-aware.

        A report proves life only for the device it names: a child's, always; this
        actor's own, only from a push actor's ``run()`` (inside ``poll()`` the poll's
        outcome decides). An empty ``readings`` naming a child is a heartbeat.
        """
        batch = validate_readings(readings, source="report()")
        if device_id is not None:
            _check_child_id(device_id, self.config.identity.device_id)
        observed_at: float | None = None
        if timestamp is not None:
            if not isinstance(timestamp, datetime) or timestamp.utcoffset() is None:
                raise InvalidReading(
                    f"report() timestamp must be a timezone-aware datetime, got {timestamp!r}",
                    hint="Use datetime.now(timezone.utc) or attach the vendor's zone.",
                )
            observed_at = timestamp.timestamp()
        self._attached().on_report(batch, device_id, observed_at)

    def emit_event(
        self,
        event_type: str,
        data: Mapping[str, Any] | None = None,
        *,
        severity: Severity = "info",
        device_id: str | None = None,
    ) -> str:
        """Queue an event for Core and return its ``event_id`` (fixed across retries)."""
        if not isinstance(event_type, str) or not event_type.strip():
            raise InvalidEvent(f"emit_event() needs a non-empty event type, got {event_type!r}")
        if severity not in SEVERITIES:
            raise InvalidEvent(
                f"emit_event() severity must be one of {sorted(SEVERITIES)}, got {severity!r}"
            )
        if data is not None and not isinstance(data, Mapping):
            raise InvalidEvent(f"emit_event() data must be a mapping, got {type(data).__name__}")
        problem = json_problem(data) or (
            None if len(event_type) <= MAX_NAME and event_type.isprintable() else "a bad type"
        )
        if problem is not None:
            raise InvalidEvent(
                f"emit_event({event_type[:40]!r}) got {problem}",
                hint=f"Event types are printable and at most {MAX_NAME} characters; data is "
                "plain JSON (strings, finite numbers, booleans, null, lists, objects).",
            )
        return self._attached().on_event(event_type, dict(data or {}), severity, device_id)

    def source_packets(
        self,
        model: str,
        id: str | int,
        channel: str | int | None = None,
        *,
        source: str | None = None,
        capacity: int | None = None,
    ) -> SourceInbox:
        """The packets of one device heard on the integration's shared sources
        (``Integration(sources=[MqttSource(...)])``): ``async for packet in ...`` yields a
        ``SourcePacket`` per envelope whose ``device_hint`` has this ``model`` and ``id``
        (compared as text), on ``channel`` (None: any) from envelope ``source`` (None:
        any).

        The claim lasts until the actor stops, so packets heard while it backs off wait
        for it (at most ``capacity``, 64 by default; past that the oldest are dropped and
        counted in ``/diagnostics``). Raises ``SourceNotDeclared`` when the integration
        declares no source.
        """
        hub = self._sources
        if hub is None:
            raise ActorNotAttached(
                f"{type(self).__name__} for {self.config.id!r} is not running under a supervisor"
            )
        return hub.claim(self, SourceHint.of(model, id, channel, source), capacity=capacity)

    def forget_child(self, device_id: str) -> bool:
        """Say that child ``device_id`` is gone for good (unpaired, removed from the
        gateway): it leaves ``/state``, ``/entities`` and ``/diagnostics`` quietly, with no
        ``device.unavailable`` for Core. Returns whether it was known. A later report
        naming it makes it a new child."""
        return self._attached().on_forget_child(device_id)

    @property
    def log(self) -> logging.LoggerAdapter:  # type: ignore[type-arg]
        """A logger for this device: the actor's module logger, messages prefixed with its id."""
        if self._log is None:
            ident = self.config.identity
            self._log = _DeviceLog(
                protect(logging.getLogger(type(self).__module__)),
                {"device_id": ident.device_id, "config_id": ident.config_id},
            )
        return self._log

    def _attached(self) -> ActorOutputs:
        if self._outputs is None:
            raise ActorNotAttached(
                f"{type(self).__name__} for {self.config.id!r} is not running under a supervisor"
            )
        return self._outputs


def _check_child_id(device_id: object, own: str) -> None:
    """A child's id is a key in ``/state`` and an entity id: a printable string of at most
    ``MAX_NAME`` characters (the actor's own device id is whatever its config says)."""
    if device_id == own:
        return
    if not isinstance(device_id, str) or not device_id.strip():
        raise InvalidReading(f"report() device_id must be a non-empty string, got {device_id!r}")
    if len(device_id) > MAX_NAME or not device_id.isprintable():
        raise InvalidReading(
            f"report() device_id must be printable and at most {MAX_NAME} characters, "
            f"got {device_id[:40]!r}",
            hint="Use the vendor's stable id of the child device (a MAC, a serial number).",
        )


def _check_children_settings(cls: type[DeviceActor[Any]]) -> None:
    stale = cls.child_stale_after
    if stale is not None and not (
        isinstance(stale, (int, float)) and stale > 0 and math.isfinite(stale)
    ):
        raise InvalidActor(
            f"{cls.__name__}.child_stale_after must be None or a positive number, got {stale!r}"
        )
    cap = cls.max_children
    if not (type(cap) is int and cap >= 0):
        raise InvalidActor(f"{cls.__name__}.max_children must be a whole number >= 0, got {cap!r}")


def _check_poll_intervals(cls: type[DeviceActor[Any]]) -> None:
    """The class's ``poll_interval`` and its config model's default ``poll_interval_seconds``
    (which validation does not see) respect ``MIN_POLL_INTERVAL``."""
    field = cls.config_model.model_fields.get("poll_interval_seconds")
    default = field.default if field is not None else None
    for where, value in (
        (f"{cls.__name__}.poll_interval", cls.poll_interval),
        (f"{cls.config_model.__name__}.poll_interval_seconds's default", default),
    ):
        if isinstance(value, (int, float)) and not value >= MIN_POLL_INTERVAL:
            raise InvalidActor(
                f"{where} must be a positive number of at least {MIN_POLL_INTERVAL} s, "
                f"got {value!r}",
                hint="Shorter intervals starve every other device of the event loop.",
            )


def _collect_commands(cls: type[DeviceActor[Any]]) -> dict[str, CommandSpec]:
    commands: dict[str, CommandSpec] = {}
    for klass in reversed(cls.__mro__):
        own: set[str] = set()
        for value in vars(klass).values():
            spec = getattr(value, _COMMAND_MARK, None)
            if isinstance(spec, CommandSpec):
                if spec.name in own:
                    raise InvalidActor(f"{klass.__name__} declares command {spec.name!r} twice")
                own.add(spec.name)
                commands[spec.name] = spec
    return commands
