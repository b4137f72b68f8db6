"""Everything the runtime takes from its environment, read once into one value.

``Settings.from_env()`` is the only reader of the process environment: ``serve`` and the
CLI call it before anything starts (so a bad value is a clear error, never a silent
fallback), the app under hypercorn's CLI calls it once when it opens the runtime, and
everything else is handed the ``Settings``. docs/contract.md (Environment) lists them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import attrs

from ._contract import DEFAULT_CORE_URL

__all__ = ["Durability", "Settings", "mounted_snapshot_path", "parse_port", "state_dir"]

Durability = Literal["memory", "write_ahead"]
LogFormat = Literal["text", "json"]

#: Per-device series /metrics exports while the fleet is no larger (then only sums).
METRICS_PER_DEVICE_CAP = 1000
#: Resident memory past which /health says ``degraded`` (``memory_high``), in MB.
MEMORY_LIMIT_MB = 512.0


@attrs.frozen(kw_only=True)
class Settings:
    """The runtime's settings; derive variants with ``attrs.evolve``."""

    port: int | None = None
    """``PORT``: where ``serve`` listens (None: 8000)."""
    core_base_url: str = DEFAULT_CORE_URL
    container_id: str | None = None
    token: str | None = None
    """``PIPHI_INTEGRATION_INTERNAL_TOKEN``: set, the runtime runs in managed mode."""
    snapshot_path: Path = Path("/.piphinetwork/configs.json")
    state_dir: Path = Path("state")
    log_level: str = "INFO"
    log_format: LogFormat = "text"
    durability: Durability = "memory"
    memory_limit_mb: float | None = MEMORY_LIMIT_MB
    metrics_per_device_cap: int = METRICS_PER_DEVICE_CAP
    mqtt_url: str | None = attrs.field(default=None, repr=False)
    """``PIPHI_MQTT_URL``: the broker of every ``MqttSource`` declared without one."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings ``env`` (default: the process environment) asks for. Raises
        ValueError naming the variable whose value cannot be used."""
        env = os.environ if env is None else env
        levels = ("DEBUG", "INFO", "WARNING", "ERROR")
        log_format: LogFormat = (
            "json" if _choice(env, "PIPHI_LOG_FORMAT", ("text", "json")) == "json" else "text"
        )
        durability: Durability = (
            "write_ahead"
            if _choice(env, "PIPHI_DURABILITY", ("memory", "write_ahead")) == "write_ahead"
            else "memory"
        )
        return cls(
            port=parse_port(env.get("PORT"), default=None),
            core_base_url=env.get("PIPHI_CORE_BASE_URL") or DEFAULT_CORE_URL,
            container_id=env.get("PIPHI_CONTAINER_ID") or None,
            token=env.get("PIPHI_INTEGRATION_INTERNAL_TOKEN") or None,
            snapshot_path=mounted_snapshot_path(env),
            state_dir=state_dir(env),
            log_level=_choice(env, "PIPHI_LOG_LEVEL", levels) or "INFO",
            log_format=log_format,
            durability=durability,
            memory_limit_mb=_memory_limit(env.get("PIPHI_MEMORY_LIMIT_MB")),
            metrics_per_device_cap=_count(
                env, "PIPHI_METRICS_PER_DEVICE_CAP", METRICS_PER_DEVICE_CAP
            ),
            mqtt_url=_mqtt_url(env.get("PIPHI_MQTT_URL")),
        )


def parse_port(value: str | None, default: int | None = 8000) -> int | None:
    """``PORT`` as Core assigns it; an invalid value is an error, never a silent fallback."""
    if value is None or value == "":
        return default
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ValueError(f"PORT must be an integer from 0 to 65535, got {value!r}")
    return port


def state_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where the runtime keeps its own files: the spool, the command ledger and the
    last-applied snapshot. ``PIPHI_STATE_DIR`` when set (point it at a volume that
    outlives the container), else ``$XDG_STATE_HOME/piphi-runtime/<container id>``, else
    ``~/.local/state/piphi-runtime/<container id>``; two runtimes on one host never share
    a spool. Not created here."""
    env = os.environ if env is None else env
    explicit = env.get("PIPHI_STATE_DIR")
    if explicit:
        return Path(explicit)
    base = env.get("XDG_STATE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".local/state")
    # A container id comes from outside: keep it to one safe path component.
    scope = re.sub(r"[^A-Za-z0-9._-]", "_", env.get("PIPHI_CONTAINER_ID") or "") or "default"
    if scope in (".", ".."):
        scope = "default"
    return Path(base) / "piphi-runtime" / scope


def mounted_snapshot_path(
    env: Mapping[str, str] | None = None, root: Path = Path("/.piphinetwork")
) -> Path:
    """Where Core mounts the snapshot (docs/contract.md, Environment)."""
    env = os.environ if env is None else env
    explicit = env.get("PIPHI_CONFIG_SNAPSHOT_PATH")
    if explicit:
        return Path(explicit)
    container_id = env.get("PIPHI_CONTAINER_ID")
    if container_id:
        specific = root / f"{container_id}.json"
        if specific.exists():
            return specific
    return root / "configs.json"


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str | None:
    """The one of ``choices`` that ``name`` says (any case, ``-`` for ``_``), or None."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    for choice in choices:
        if raw.lower().replace("-", "_") == choice.lower():
            return choice
    raise ValueError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")


def _memory_limit(raw: str | None) -> float | None:
    value = (raw or "").strip().lower()
    if not value:
        return MEMORY_LIMIT_MB
    if value in ("0", "off", "none"):
        return None
    try:
        limit = float(value)
    except ValueError:
        limit = -1.0
    if not limit > 0:
        raise ValueError(
            f"PIPHI_MEMORY_LIMIT_MB must be a number of megabytes (or 0 for no limit), got {raw!r}"
        )
    return limit


def _count(env: Mapping[str, str], name: str, default: int) -> int:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    if not raw.isdigit():
        raise ValueError(f"{name} must be a whole number, got {raw!r}")
    return int(raw)


def _mqtt_url(raw: str | None) -> str | None:
    value = (raw or "").strip()
    if not value:
        return None
    if not re.match(r"^(mqtts?|tcp)://[^/?#]+/?$", value):
        # Not echoed: it may carry a password.
        raise ValueError("PIPHI_MQTT_URL must look like mqtt://[user:password@]host[:port]")
    return value
