"""Start-up rehydration from the mounted file, Core's rows and our own copy."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
import trio

from runtime.delivery import CoreClient
from runtime.lowlevel import (
    ConfigSync,
    LocalCopy,
    mounted_snapshot_path,
    open_actor_nursery,
    rehydrate,
)
from runtime.testing import FakeCore, RecordingSink

from .helpers import Probe


def write(path: Path, body: Any) -> Path:
    path.write_text(body if isinstance(body, str) else json.dumps(body))
    return path


def snapshot(generation: int | None, *ids: str, **extra: Any) -> dict[str, Any]:
    return {"generation": generation, "configs": [{"id": i} for i in ids], **extra}


async def statuses(report: Any) -> dict[str, str]:
    return {s.source: s.status for s in report.sources}


async def test_from_the_mounted_file(tmp_path: Path, autojump_clock: Any) -> None:
    mounted = write(tmp_path / "configs.json", snapshot(4, "a", "b"))
    async with open_actor_nursery(RecordingSink()) as actors:
        sync = ConfigSync(actors, Probe, RecordingSink())
        report = await rehydrate(sync, mounted=mounted)
        assert sync.active_config_ids == ("a", "b") and sync.last_generation == 4
    assert await statuses(report) == {
        "mounted_file": "applied",
        "local_copy": "not_configured",
        "core": "not_configured",
    }
    assert report.ok


async def test_cores_rows_replace_the_files_set(tmp_path: Path, autojump_clock: Any) -> None:
    mounted = write(tmp_path / "configs.json", snapshot(4, "a", "b"))
    rows = [
        {
            "id": "b",
            "container_id": "c1",
            "integration_id": "i1",
            "generation": 9,
            "config_data": {"id": "b"},
        },
        {
            "id": "uuid-c",
            "container_id": "c1",
            "config_data": {"id": "c", "pollIntervalSeconds": 2},
        },
    ]

    async def fetch() -> list[dict[str, Any]]:
        return rows

    async with open_actor_nursery(RecordingSink()) as actors:
        sync = ConfigSync(actors, Probe, RecordingSink())
        report = await rehydrate(sync, mounted=mounted, fetch_core_rows=fetch)
        assert sync.active_config_ids == ("b", "c")
        c = actors.get("c")
        assert (
            c is not None and c.identity.config_id == "uuid-c" and c.identity.container_id == "c1"
        )
        assert c.actor.config.poll_interval_seconds == 2
    assert (await statuses(report))["core"] == "applied"


async def test_a_restart_while_core_is_down_comes_back_from_our_own_copy(
    tmp_path: Path, autojump_clock: Any
) -> None:
    local = LocalCopy(tmp_path / "state" / "last-snapshot.json")
    async with open_actor_nursery(RecordingSink()) as actors:
        sync = ConfigSync(actors, Probe, RecordingSink(), on_applied=local.save)
        await sync.apply_snapshot(snapshot(7, "a", "b", internalToken="tok-SECRET-123"))
        await sync.remove("b")
        await sync.apply_config({"id": "c", "password": "hunter2"})
    saved = local.path.read_text()
    assert "tok-SECRET-123" not in saved, "the internal token never reaches the disk"
    assert stat.S_IMODE(local.path.stat().st_mode) == 0o600
    assert not list(local.path.parent.glob("*.tmp")), "no temp file left behind"

    async def core_down() -> list[dict[str, Any]]:
        raise OSError("connection refused")

    older_mount = write(tmp_path / "configs.json", snapshot(3, "old"))
    async with open_actor_nursery(RecordingSink()) as actors:
        sync = ConfigSync(actors, Probe, RecordingSink())
        report = await rehydrate(sync, mounted=older_mount, local=local, fetch_core_rows=core_down)
        assert sync.active_config_ids == ("a", "c")
        c = actors.get("c")
        assert c is not None and c.actor.config.model_extra == {"password": "hunter2"}
    assert await statuses(report) == {
        "mounted_file": "older",
        "local_copy": "applied",
        "core": "unavailable",
    }
    assert "connection refused" in (report.sources[-1].detail or "")


@pytest.mark.parametrize("body", ["{not json", "[1, 2]", {"configs": "nope"}])
async def test_a_corrupt_file_is_reported_never_raised(
    tmp_path: Path, body: Any, autojump_clock: Any
) -> None:
    mounted = write(tmp_path / "configs.json", body)
    local = LocalCopy(tmp_path / "mine.json")
    write(local.path, snapshot(2, "kept"))
    async with open_actor_nursery(RecordingSink()) as actors:
        sync = ConfigSync(actors, Probe, RecordingSink())
        report = await rehydrate(sync, mounted=mounted, local=local)
        assert sync.active_config_ids == ("kept",)
    assert not report.ok
    corrupt = report.sources[0]
    assert (corrupt.source, corrupt.status) == ("mounted_file", "corrupt") and corrupt.detail
    assert json.loads(json.dumps(report.to_dict()))["ok"] is False


async def test_nothing_to_rehydrate_from(tmp_path: Path, autojump_clock: Any) -> None:
    async with open_actor_nursery(RecordingSink()) as actors:
        sync = ConfigSync(actors, Probe, RecordingSink())
        report = await rehydrate(
            sync, mounted=tmp_path / "absent.json", local=LocalCopy(tmp_path / "none.json")
        )
        assert sync.active_config_ids == ()
    assert await statuses(report) == {
        "mounted_file": "missing",
        "local_copy": "missing",
        "core": "not_configured",
    }
    assert report.ok


def test_the_mounted_path_follows_the_contract(tmp_path: Path) -> None:
    assert mounted_snapshot_path(
        {"PIPHI_CONFIG_SNAPSHOT_PATH": "/x/y.json"}, root=tmp_path
    ) == Path("/x/y.json")
    assert (
        mounted_snapshot_path({"PIPHI_CONTAINER_ID": "ctr"}, root=tmp_path)
        == tmp_path / "configs.json"
    )
    write(tmp_path / "ctr.json", {})
    assert (
        mounted_snapshot_path({"PIPHI_CONTAINER_ID": "ctr"}, root=tmp_path) == tmp_path / "ctr.json"
    )
    assert mounted_snapshot_path({}, root=tmp_path) == tmp_path / "configs.json"


async def test_cores_rows_come_from_core_over_http(
    tmp_path: Path, nursery: trio.Nursery, autojump_clock: Any
) -> None:
    core = FakeCore()
    core.token = "tok-live"
    core.configs = [{"id": "uuid-a", "container_id": "c1", "config_data": {"id": "a"}}]
    await nursery.start(core.serve)
    async with (
        CoreClient(core.url, container_id="c1", token="tok-live") as client,
        open_actor_nursery(RecordingSink()) as actors,
    ):
        sync = ConfigSync(actors, Probe, RecordingSink())
        report = await rehydrate(sync, mounted=None, fetch_core_rows=client.fetch_configs)
        assert sync.active_config_ids == ("a",)
    assert (await statuses(report))["core"] == "applied"


async def test_core_refusing_the_token_is_reported_without_it(
    tmp_path: Path, nursery: trio.Nursery, autojump_clock: Any
) -> None:
    core = FakeCore()
    core.token = "tok-live"
    await nursery.start(core.serve)
    async with (
        CoreClient(core.url, container_id="c1", token="tok-stale") as client,
        open_actor_nursery(RecordingSink()) as actors,
    ):
        report = await rehydrate(
            ConfigSync(actors, Probe, RecordingSink()),
            mounted=None,
            fetch_core_rows=client.fetch_configs,
        )
    core_report = report.sources[-1]
    assert core_report.status == "unavailable"
    assert "401" in (core_report.detail or "")
    assert "tok-stale" not in str(report.to_dict())


async def test_no_container_id_yet_means_core_is_not_asked(autojump_clock: Any) -> None:
    async with CoreClient() as client, open_actor_nursery(RecordingSink()) as actors:
        report = await rehydrate(
            ConfigSync(actors, Probe, RecordingSink()),
            mounted=None,
            fetch_core_rows=client.fetch_configs,
        )
    assert (await statuses(report))["core"] == "not_configured"
