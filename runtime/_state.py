"""Where the runtime keeps its own files: the delivery spool and the last-applied snapshot.

``PIPHI_STATE_DIR`` when set (point it at a volume that outlives the container, or the
spool and the snapshot copy go with it), else ``$XDG_STATE_HOME/piphi-runtime/<scope>``,
else ``~/.local/state/piphi-runtime/<scope>``. The scope is the container id, so two
runtimes on one host never share a spool; without one it is ``default``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

__all__ = ["state_dir"]


def state_dir(env: Mapping[str, str] | None = None) -> Path:
    """The directory for this runtime's own files (not created here)."""
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
