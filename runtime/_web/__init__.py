"""The web layer: the PiPhi routes served from a running runtime (see ``app.py``)."""

from .app import MAX_BODY, build_app
from .context import RUNTIME_KEY

__all__ = ["MAX_BODY", "RUNTIME_KEY", "build_app"]
