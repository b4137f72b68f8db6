"""The owner of a set of running actors: their nursery, scheduler, sink and stall watch.

Leaving ``async with open_actor_nursery(...)`` stops every actor: each runs its
teardown shielded and bounded by its grace period, concurrently with the others.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing

from ._actor import DeviceActor
from ._children import Child
from ._config import validate_config
from ._errors import InvalidActor
from ._health import AvailabilityReason, Concern
from ._policy import RestartPolicy
from ._scheduler import Scheduler
from ._sink import Sink
from ._sources import SourceHub
from ._stalls import StallWatch, owners_by_method
from ._supervisor import Supervisor

__all__ = ["ActorNursery", "open_actor_nursery"]


class ActorNursery:
    """Spawns supervised actors; one per config id. Made by ``open_actor_nursery()``."""

    def __init__(
        self,
        nursery: trio.Nursery,
        scheduler: Scheduler,
        sink: Sink,
        rng: random.Random,
        stalls: StallWatch | None = None,
        sources: SourceHub | None = None,
    ) -> None:
        self._nursery = nursery
        self.sources = sources or SourceHub()
        """The shared sources actors claim packets from (``DeviceActor.source_packets``)."""
        self.stalls = stalls
        """The watchdog of the trio thread, when one runs (see ``open_actor_nursery``)."""
        self._scheduler = scheduler
        self._sink = sink
        self._rng = rng
        self._salt = rng.getrandbits(64).to_bytes(8, "little")
        self._actors: dict[str, Supervisor] = {}

    def __len__(self) -> int:
        return len(self._actors)

    def __iter__(self) -> Iterator[Supervisor]:
        return iter(list(self._actors.values()))

    def __contains__(self, config_id: object) -> bool:
        return config_id in self._actors

    def concerns(self) -> list[Concern]:
        """Why these actors make the runtime degraded beyond their states: an actor that
        blocked the event loop recently."""
        return self.stalls.concerns() if self.stalls is not None else []

    def get(self, config_id: str) -> Supervisor | None:
        """The supervisor of the actor for local config ``id``, if one is running."""
        return self._actors.get(config_id)

    def spawn(
        self,
        actor_class: type[DeviceActor[Any]],
        config: Mapping[str, Any] | Any,
        *,
        policy: RestartPolicy | None = None,
        unavailable: AvailabilityReason | None = None,
        children: Iterable[Child] = (),
    ) -> Supervisor:
        """Start a supervised actor for ``config`` (a mapping or a config model instance).

        Returns at once; setup() runs in the actor's own task. Raises InvalidConfig if the
        config does not validate against the actor's ``config_model``, and ValueError if an
        actor for the same config id is still running (stop it first). ``unavailable``
        carries over why a stopped predecessor for the same config was unavailable, and
        ``children`` the children it kept (``Supervisor.hand_over_children()``).
        """
        if not (isinstance(actor_class, type) and issubclass(actor_class, DeviceActor)):
            raise InvalidActor(f"spawn() needs a DeviceActor subclass, got {actor_class!r}")
        validated = validate_config(actor_class.config_model, config)
        if validated.id in self._actors:
            raise ValueError(
                f"an actor for config {validated.id!r} is already running; stop it first"
            )
        actor = actor_class(validated)
        actor._sources = self.sources
        supervisor = Supervisor(
            actor,
            scheduler=self._scheduler,
            sink=self._sink,
            rng=self._rng,
            phase=self._phase(validated.id),
            policy=policy,
            on_exit=self._forget,
            unavailable=unavailable,
            children=children,
        )
        self._nursery.start_soon(supervisor.run, name=f"actor {validated.id}")
        self._actors[validated.id] = supervisor  # after start_soon, which raises once closed
        return supervisor

    def _phase(self, config_id: str) -> float:
        """Where in its interval a device's first poll falls, in [0, 1).

        A hash of the config id rather than a draw from the shared rng: trio varies the
        order in which new tasks first run, so draws would land on different devices from
        run to run, while a hash gives each device the same phase every time.
        """
        digest = hashlib.blake2b(config_id.encode(), key=self._salt, digest_size=8).digest()
        return int.from_bytes(digest, "little") / 2**64

    def _forget(self, supervisor: Supervisor) -> None:
        self.sources.release(supervisor.actor)
        supervisor.actor._sources = None
        if self._actors.get(supervisor.identity.id) is supervisor:
            del self._actors[supervisor.identity.id]


@asynccontextmanager
async def open_actor_nursery(
    sink: Sink,
    *,
    rng: random.Random | None = None,
    resolution: float = 0.005,
    stall_threshold: float | None = 0.25,
    sources: SourceHub | None = None,
) -> AsyncIterator[ActorNursery]:
    """Open a nursery of supervised actors that hand their output to ``sink``.

    ``rng`` salts the first-poll spread and drives backoff jitter (seed it for
    reproducible runs);
    ``resolution`` is the shared scheduler's tick, the most lateness it adds;
    ``stall_threshold`` is how long the trio thread may be held before the stall watchdog
    names the actor holding it (``runtime/_stalls.py``); None turns the watchdog off. It
    measures real time, so under a virtual clock (tests), where time stands still while
    the thread is held, it is off too. ``sources`` is the hub actors claim source
    packets from (``open_sources()``, opened around this nursery); without one, a claim
    raises ``SourceNotDeclared``.
    """
    scheduler = Scheduler(resolution=resolution)
    stalls = None
    if stall_threshold is not None and not isinstance(
        trio.lowlevel.current_clock(), trio.testing.MockClock
    ):
        # The bodies of the tasks a supervisor runs its actor's hooks in.
        tasks = ("run", "_serve_mailbox_while_running")
        stalls = StallWatch(owners_by_method(Supervisor, tasks), threshold=stall_threshold)
    async with trio.open_nursery() as outer:
        await outer.start(scheduler.run)
        if stalls is not None:
            await outer.start(stalls.run)
        async with trio.open_nursery() as inner:
            yield ActorNursery(
                inner, scheduler, sink, rng or random.Random(), stalls, sources=sources
            )
            inner.cancel_scope.cancel(reason="actor nursery closed")
        outer.cancel_scope.cancel(reason="actor nursery closed")
