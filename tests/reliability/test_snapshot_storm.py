"""A storm of config snapshots while Core refuses connections, then Core comes back."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.reliability._procs import (
    ACTOR_OF_KIND,
    KINDS,
    LiveCore,
    LiveRuntime,
    assert_responsive,
    device,
    drain_and_account,
    report,
    start_devices,
    watching_health,
)

pytestmark = pytest.mark.slow  # a real process: make test runs it, -m "not slow" skips it

POOL = 24
SEQUENTIAL = 20
BATCHES = 6
AT_ONCE = 4


def _ids(configs: list[dict[str, Any]]) -> list[str]:
    return sorted(c["id"] for c in configs)


async def _concurrently(
    rt: LiveRuntime, batch: dict[int, list[dict[str, Any]]], order: list[int]
) -> dict[int, dict[str, Any]]:
    """Send the batch's snapshots all at once (started in ``order``); answers by generation."""
    answers: dict[int, dict[str, Any]] = {}

    async def send(generation: int) -> None:
        answers[generation] = await rt.sync(batch[generation], generation=generation)

    async with trio.open_nursery() as nursery:
        for generation in order:
            nursery.start_soon(send, generation)
    return answers


async def test_a_snapshot_storm_while_core_is_down(
    core: LiveCore, rt: LiveRuntime, tmp_path: Path
) -> None:
    rng = random.Random(2024)
    state = tmp_path / "state"

    def snapshot() -> list[dict[str, Any]]:
        """A random set of the pool, each with a random kind, interval and seed: devices
        come, go, change class and change config from one snapshot to the next."""
        chosen = sorted(rng.sample(range(POOL), rng.randint(3, 14)))
        return [
            device(
                n, kind=rng.choice(KINDS), interval=rng.choice((0.2, 0.3)), seed=rng.randint(0, 2)
            )
            for n in chosen
        ]

    first = [device(n) for n in range(8)]
    await start_devices(rt, core, first)
    await core.down()
    await rt.wait_for(
        lambda d: d["delivery"]["link"]["state"] == "down", timeout=10, what="link down"
    )

    applied = stale = 0
    ran = set(_ids(first))
    async with watching_health(rt) as samples:
        for n in range(SEQUENTIAL):
            configs = snapshot()
            shown = set(_ids(configs))
            # Some snapshots also list deleted ids: gone ones, or one that is in the snapshot
            # too ("deleted wins": it must not run).
            deleted = {c["id"] for c in first} - shown if n % 3 == 0 else set()
            if n % 4 == 1:
                deleted.add(configs[0]["id"])
            answer = await rt.sync(configs, deleted=tuple(sorted(deleted)))
            assert answer["status"] == "synced", answer
            assert sorted(answer["active_config_ids"]) == sorted(shown - deleted), answer
            assert set(answer["skipped"]) == shown & deleted, answer
            applied += 1
            ran.update(shown - deleted)
            last = [c for c in configs if c["id"] not in deleted]
        for _ in range(BATCHES):
            batch = {rt.generation + k + 1: snapshot() for k in range(AT_ONCE)}
            answers = await _concurrently(rt, batch, rng.sample(list(batch), len(batch)))
            newest = max(batch)
            assert answers[newest]["status"] == "synced", answers[newest]
            for generation, answer in answers.items():
                assert answer["status"] in ("synced", "stale_ignored"), answer
                if answer["status"] == "synced":
                    applied += 1
                    assert sorted(answer["active_config_ids"]) == _ids(batch[generation])
                    ran.update(_ids(batch[generation]))
                else:
                    stale += 1
            last = batch[newest]
        late = await rt.sync(snapshot(), generation=rt.generation - 2)
        assert late["status"] == "stale_ignored", "an older generation changes nothing"
        assert sorted(late["active_config_ids"]) == _ids(last)
    slowest = assert_responsive(samples)

    # The runtime runs exactly the last snapshot: no more, no fewer, the right classes.
    diagnostics = await rt.diagnostics()
    actors = {a["device_id"]: a for a in diagnostics["actors"]}
    assert sorted(actors) == _ids(last)
    assert len(diagnostics["actors"]) == diagnostics["runtime"]["devices"] == len(last)
    assert diagnostics["runtime"]["generation"] == rt.generation
    for config in last:
        actor = actors[config["id"]]
        assert actor["actor"] == ACTOR_OF_KIND[config["device_type"]], actor
        assert actor["state"] in ("starting", "running"), actor
    entities = (await rt.http.get("/entities")).json()["entities"]
    assert sorted(e["device_id"] for e in entities) == _ids(last)
    copy = json.loads((state / "snapshot.json").read_text())
    assert copy["generation"] == rt.generation
    assert sorted(c["id"] for c in copy["configs"]) == _ids(last)
    assert diagnostics["delivery"]["spool_depth"] > 0

    await core.up()
    final, dups = await drain_and_account(rt, core, last)

    # Every device that ran at some point reached Core (its readings or at least its
    # device.configured event), the ones removed while Core was down too.
    assert ran <= {b["device_id"] for b in core.payloads()}
    report(
        "snapshot storm",
        snapshots_applied=applied,
        stale_ignored=stale,
        devices_at_end=len(last),
        devices_ever=len({b["device_id"] for b in core.payloads()}),
        accepted=final["delivery"]["accepted"],
        slowest_health_s=round(slowest, 3),
        duplicates=sum(n - 1 for n in dups.values()),
    )
