"""A running integration: Core client, outbox, actors and config sync in one lifetime.

``open_runtime()`` opens them innermost-last, so leaving it stops the actors first (each
runs its teardown), then closes the shared sources (``_sources``), then writes undelivered
data to the spool, then closes the client:
nothing an actor emitted on its way out is lost. Start-up rehydrates the devices from
the mounted snapshot, our own last copy and Core's rows before the caller gets control.

Auth follows the kit: the runtime learns the container id and token from the headers of
Core's requests and uses them toward Core. With a token from the environment (managed
mode) that token is fixed, and routes demand it; otherwise the first token seen is adopted.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import attrs
import httpx
import trio

from ._core import CoreClient, header_value
from ._health import Concern, fleet_concerns
from ._ledger import CommandLedger
from ._logs import protect_known
from ._nursery import ActorNursery, open_actor_nursery
from ._outbox import Outbox, OutboxSettings, open_outbox
from ._process import MemoryMonitor
from ._reconciler import ConfigSync
from ._redact import SecretValues
from ._registry import Registry
from ._rehydrate import LocalCopy, RehydrationReport, rehydrate
from ._settings import Settings
from ._sources import SourceHub, open_sources

if TYPE_CHECKING:
    from ._integration import Integration

__all__ = ["Runtime", "open_runtime"]

TokenSource = Literal["environment", "adopted", "none"]


@attrs.define(eq=False)
class Runtime:
    """What the routes read and drive; made by ``open_runtime()``."""

    integration: Integration
    client: CoreClient
    outbox: Outbox
    actors: ActorNursery
    sync: ConfigSync
    registry: Registry
    ledger: CommandLedger
    state_dir: Path
    managed: bool
    """A token came from the environment: every route but /health requires it."""
    token_source: TokenSource
    started_at: float = attrs.field(factory=time.time)
    settings: Settings = attrs.field(factory=Settings)
    """What the runtime was started with (``Settings.from_env``)."""
    secrets: SecretValues = attrs.field(factory=SecretValues)
    """Every secret this runtime was configured with: masked in its answers and logs."""
    rehydration: RehydrationReport | None = None
    failure: str | None = None
    """Set when the runtime's core has died: health then answers 503."""
    memory: MemoryMonitor = attrs.field(factory=MemoryMonitor)
    """The process's RSS, its trend and its limit (``PIPHI_MEMORY_LIMIT_MB``)."""

    @property
    def sources(self) -> SourceHub:
        """The integration's shared sources (``Integration(sources=...)``), which the
        actors claim packets from, and their figures."""
        return self.actors.sources

    def concerns(self, by_state: Mapping[str, int]) -> list[Concern]:
        """Why the runtime is degraded now (empty: ``ok``), given its actors counted by
        state: every part that can be unhealthy adds its own."""
        return [
            *fleet_concerns(by_state),
            *self.actors.concerns(),
            *self.outbox.concerns(),
            *self.memory.concerns(),
            *self.sources.concerns(),
        ]

    def figures(self) -> dict[str, Any]:
        """Runtime-wide figures beside the routes' own, for ``/health`` and ``/diagnostics``:
        memory, and what was lost from damaged state files at start-up (None if nothing)."""
        ledger = self.ledger.recovery
        return {
            "memory": self.memory.to_dict(),
            "storage": {
                "spool": self.outbox.stats_recovery(),
                "command_ledger": ledger.to_dict() if ledger else None,
            },
        }

    def learn_auth(
        self, container_id: str | None, token: str | None, *, from_snapshot: bool
    ) -> None:
        """What Core's requests teach the runtime about its own auth toward Core.

        Managed mode: the token is the environment's and nothing replaces it; the
        container id is learnt from an authenticated request if none is known yet.
        Adopted mode: anyone who reaches the port could send headers, so only an applied
        snapshot (``from_snapshot``: Core's own statement of the runtime's configuration)
        teaches the token and the container id, and a later one may rotate the token.
        A refused or stale request teaches nothing. The first container id is kept.
        """
        token = header_value(token)
        if self.managed:
            token = None
        elif not from_snapshot:
            return
        if self.client.container_id:
            container_id = None
        if self.client.set_auth(container_id=container_id, token=token) and token:
            self.secrets.add(token)
            self.token_source = "adopted"


def _core_client(
    settings: Settings, integration: Integration, transport: httpx.AsyncBaseTransport | None
) -> CoreClient:
    return CoreClient(
        settings.core_base_url,
        container_id=settings.container_id,
        token=settings.token,
        integration_id=integration.id,
        transport=transport,
    )


@asynccontextmanager
async def open_runtime(
    integration: Integration,
    *,
    settings: Settings | None = None,
    env: Mapping[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    outbox_settings: OutboxSettings | None = None,
    rng: random.Random | None = None,
    around_reconcile: Callable[[], AbstractContextManager[None]] = nullcontext,
) -> AsyncIterator[Runtime]:
    """Run ``integration``: open everything, rehydrate, yield the ``Runtime``.

    ``settings`` default to ``Settings.from_env(env)`` (``env``: the process environment
    when None). ``around_reconcile`` wraps each snapshot's reconciliation: the process
    owner's hook (``serve`` holds the garbage collector off there, see ``_collector``)."""
    if settings is None:
        settings = Settings.from_env(env)
    protect_known()
    delivery = outbox_settings or OutboxSettings(durability=settings.durability)
    memory = MemoryMonitor(limit_mb=settings.memory_limit_mb)
    client = _core_client(settings, integration, transport)
    token = header_value(settings.token)
    secrets = SecretValues().open()
    if token:
        secrets.add(token)
    directory = settings.state_dir
    local = LocalCopy(directory / "snapshot.json")
    with _live(secrets):
        async with (
            client,
            CommandLedger.opened(directory / "commands.db") as ledger,
            open_outbox(client, spool_path=directory / "spool.db", settings=delivery) as outbox,
            # Around the actors: they stop (and release their claims) before it closes.
            open_sources(
                integration.sources, settings=settings, secrets=secrets, rng=rng
            ) as sources,
            open_actor_nursery(outbox, rng=rng, sources=sources) as actors,
            trio.open_nursery() as background,
        ):
            if ledger.recovery is not None:
                outbox.report_recovery(ledger.recovery)
            background.start_soon(memory.run)
            sync = ConfigSync(
                actors,
                integration.selector,
                outbox,
                on_applied=local.save,
                on_removed=outbox.forget,
                secrets=secrets,
                around_reconcile=around_reconcile,
            )
            runtime = Runtime(
                integration=integration,
                client=client,
                outbox=outbox,
                actors=actors,
                sync=sync,
                registry=Registry(actors),
                ledger=ledger,
                state_dir=directory,
                managed=token is not None,
                token_source="environment" if token else "none",
                secrets=secrets,
                memory=memory,
                settings=settings,
            )
            runtime.rehydration = await rehydrate(
                sync,
                mounted=settings.snapshot_path,
                local=local,
                fetch_core_rows=client.fetch_configs if client.container_id else None,
            )
            try:
                yield runtime
            finally:
                background.cancel_scope.cancel(reason="runtime closing")


@contextmanager
def _live(secrets: SecretValues) -> Iterator[None]:
    """The runtime's secrets are scrubbed from every log line while it runs, including
    its last ones as it stops."""
    try:
        yield
    finally:
        secrets.close()
