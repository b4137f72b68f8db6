"""The web layer: the PiPhi routes served from a running runtime (see ``app.py``)."""

from .app import build_app
from .bodies import MAX_BODY, MAX_DEPTH, MAX_SNAPSHOT_BODY
from .context import RUNTIME_KEY

__all__ = ["MAX_BODY", "MAX_DEPTH", "MAX_SNAPSHOT_BODY", "RUNTIME_KEY", "build_app"]
