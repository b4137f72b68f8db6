"""What a request handler reaches: the integration it serves and the runtime behind it.

The app reads and drives a ``Runtime`` found in ``app.extensions``, put there by whoever
owns the process (``serve``, or the app itself under the hypercorn CLI; see ``app.py``).
Its one long-lived task of its own is the status page's look at the actors' states once a
second (``history.py``), which reads and never drives.
"""

from __future__ import annotations

from quart import current_app

from .._integration import Integration
from .._runtime import Runtime
from .problem import Problem

__all__ = ["INTEGRATION_KEY", "RUNTIME_KEY", "current_integration", "current_runtime"]

RUNTIME_KEY = "piphi.runtime"
INTEGRATION_KEY = "piphi.integration"


def current_runtime() -> Runtime:
    """The running runtime; a 503 problem while it is starting or stopping."""
    found = current_app.extensions.get(RUNTIME_KEY)
    if not isinstance(found, Runtime):
        raise Problem(
            503,
            "The runtime is starting or stopping.",
            code="runtime_unavailable",
            hint="Retry in a few seconds.",
            headers={"Retry-After": "2"},
        )
    return found


def current_integration() -> Integration:
    found = current_app.extensions[INTEGRATION_KEY]
    assert isinstance(found, Integration)
    return found
