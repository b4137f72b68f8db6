"""How large one payload for Core may be, checked where it is made.

``MAX_PAYLOAD_BYTES`` bounds one encoded telemetry payload or event. A poll result or a
``report()`` whose readings could not fit is refused at the source with ``InvalidReading``,
and an ``emit_event()`` whose data could not fit with ``InvalidEvent``: the actor sees the
error (a poll's is recorded like any other), instead of a payload that would time out or
be refused by Core and hold up its lane. The outbox checks the encoded payload again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["ENVELOPE_ALLOWANCE", "MAX_PAYLOAD_BYTES", "encoded_size"]

#: The largest telemetry payload or event the runtime sends, encoded (JSON bytes).
MAX_PAYLOAD_BYTES = 256 * 1024
#: Room kept for what the runtime adds around an actor's data: ids, timestamps, keys.
ENVELOPE_ALLOWANCE = 4 * 1024

# ensure_ascii, as the contract's encoders: one character may take up to 12 bytes
# (an astral character as two \\uXXXX escapes).
_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False, default=str).encode


def encoded_size(value: Mapping[str, Any]) -> int:
    """The size of ``value`` as the contract encodes it; ValueError if it cannot be."""
    return len(_dumps(dict(value)))
