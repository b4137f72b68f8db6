"""Start-up rehydration: come back with the devices Core configured, even if Core is down.

Sources, in order:
1. the snapshot Core mounted into the container (``PIPHI_CONFIG_SNAPSHOT_PATH``, else
   ``/.piphinetwork/<container_id>.json``, else ``/.piphinetwork/configs.json``), or our own
   last-applied copy if that is newer (higher generation);
2. Core's rows from the config-fetch endpoint, when it answers: they replace that set.

Our own copy is rewritten after every reconciliation that changed something, atomically,
with mode 0600 and without the internal token, so a runtime restarted while Core is down
comes back with its devices. A missing or corrupt source is reported, never raised: a bad
file must not keep the runtime from starting.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs

from . import _offload
from ._errors import CoreIdentityUnknown, InvalidConfig
from ._logs import runtime_logger
from ._reconciler import ConfigSync, SyncResult, parse_snapshot
from ._settings import state_dir

__all__ = ["LocalCopy", "RehydrationReport", "SourceReport", "rehydrate"]

log = runtime_logger("runtime.rehydrate")

CoreRowsFetcher = Callable[[], Awaitable[Sequence[Mapping[str, Any]]]]
Source = Literal["mounted_file", "local_copy", "core"]


@attrs.frozen
class SourceReport:
    source: Source
    status: Literal["applied", "missing", "corrupt", "unavailable", "older", "not_configured"]
    configs: int = 0
    detail: str | None = None
    result: SyncResult | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "status": self.status,
            "configs": self.configs,
            "detail": self.detail,
        }


@attrs.frozen
class RehydrationReport:
    sources: tuple[SourceReport, ...]

    @property
    def ok(self) -> bool:
        """False if a source was corrupt: health should show it."""
        return not any(s.status == "corrupt" for s in self.sources)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "sources": [s.to_dict() for s in self.sources]}


class LocalCopy:
    """Our own last-applied snapshot on local disk. File work runs in a worker thread."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def default(cls, env: Mapping[str, str] | None = None) -> LocalCopy:
        """``snapshot.json`` in the runtime's state directory (see ``state_dir``)."""
        return cls(state_dir(env) / "snapshot.json")

    async def load(self) -> dict[str, Any] | None:
        """The saved snapshot, or None if there is none. Raises ValueError if corrupt."""
        return await _offload.offload(_read_json, self.path)

    async def save(self, snapshot: Mapping[str, Any]) -> None:
        body = {k: v for k, v in snapshot.items() if k not in ("internal_token", "internalToken")}
        await _offload.offload(_write_private, self.path, json.dumps(body, default=str))


async def rehydrate(
    sync: ConfigSync,
    *,
    mounted: Path | None,
    local: LocalCopy | None = None,
    fetch_core_rows: CoreRowsFetcher | None = None,
) -> RehydrationReport:
    """Apply what is known of the configured devices at start-up; see the module docstring."""
    reports: list[SourceReport] = []
    file_snapshot, file_report = await _load("mounted_file", mounted)
    local_snapshot, local_report = await _load("local_copy", local.path if local else None)
    base_source: Source = "mounted_file"
    base = file_snapshot
    if local_snapshot is not None and (
        file_snapshot is None or _generation(local_snapshot) > _generation(file_snapshot)
    ):
        base, base_source = local_snapshot, "local_copy"
    loaded: tuple[tuple[Source, dict[str, Any] | None, SourceReport], ...] = (
        ("mounted_file", file_snapshot, file_report),
        ("local_copy", local_snapshot, local_report),
    )
    for source, snapshot, report in loaded:
        if snapshot is None:
            reports.append(report)
        elif source != base_source:
            reports.append(SourceReport(source, "older", _count(snapshot)))
    if base is not None:
        reports.append(await _apply(sync, base_source, base))

    if fetch_core_rows is None:
        reports.append(
            SourceReport("core", "not_configured", detail="no container id or token yet")
        )
    else:
        try:
            rows = await fetch_core_rows()
        except CoreIdentityUnknown as exc:
            reports.append(SourceReport("core", "not_configured", detail=exc.message))
        except Exception as exc:  # Core down, auth, anything: report and keep what we have
            reports.append(SourceReport("core", "unavailable", detail=str(exc)))
        else:
            reports.append(await _apply(sync, "core", _snapshot_from_rows(rows)))
    result = RehydrationReport(tuple(reports))
    for entry in result.sources:
        if entry.status == "corrupt":
            log.error(
                "rehydration: %s is corrupt (%s); starting without it", entry.source, entry.detail
            )
    return result


async def _load(source: Source, path: Path | None) -> tuple[dict[str, Any] | None, SourceReport]:
    if path is None:
        return None, SourceReport(source, "not_configured")
    try:
        data = await _offload.offload(_read_json, path)
    except ValueError as exc:
        return None, SourceReport(source, "corrupt", detail=str(exc))
    if data is None:
        return None, SourceReport(source, "missing", detail=str(path))
    try:
        parse_snapshot(data)  # a well-formed file with a malformed snapshot is corrupt too
    except InvalidConfig as exc:
        errors = "; ".join(".".join(map(str, e["loc"])) for e in exc.details.get("errors", ()))
        return None, SourceReport(source, "corrupt", detail=f"{path}: {exc.message} ({errors})")
    return data, SourceReport(source, "applied")


async def _apply(sync: ConfigSync, source: Source, snapshot: Mapping[str, Any]) -> SourceReport:
    try:
        result = await sync.apply_snapshot(snapshot)
    except InvalidConfig as exc:
        return SourceReport(source, "corrupt", detail=exc.message)
    return SourceReport(source, "applied", len(sync.active_config_ids), result=result)


def _count(snapshot: Mapping[str, Any]) -> int:
    configs = snapshot.get("configs")
    return len(configs) if isinstance(configs, list) else 0


def _generation(snapshot: Mapping[str, Any]) -> int:
    value = snapshot.get("generation")
    return value if isinstance(value, int) else -1


def _snapshot_from_rows(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Core's config rows as a snapshot. Rows carry no snapshot generation, so it applies
    whatever was applied before: Core is the source of truth."""
    configs = []
    for row in rows:
        data = row.get("config_data")
        config = dict(data) if isinstance(data, Mapping) else {}
        config.setdefault("id", row.get("id"))
        config.setdefault("config_id", row.get("id"))
        for field in ("container_id", "integration_id"):
            if row.get(field) is not None:
                config.setdefault(field, row[field])
        configs.append(config)
    return {"generation": None, "reason": "rehydrate", "configs": configs}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a snapshot must be a JSON object, not {type(data).__name__}")
    return data


def _write_private(path: Path, body: str) -> None:
    """Write atomically (temp file in the same directory, fsync, rename) with mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
