"""What a request body may be: JSON, within its route's size, within a depth.

Limits (docs/contract.md):
- ``/config/sync`` and ``/configs/sync`` take up to ``MAX_SNAPSHOT_BODY`` (16 MiB): a
  snapshot of 10,000 devices as Core pushes it is about 1.5 MB, so the documented scale
  fits ten times over. Every other route takes up to ``MAX_BODY`` (1 MiB). More is 413.
- Nesting deeper than ``MAX_DEPTH`` is 400 ``too_deep``, found by a scan of the text
  before it is parsed: what is accepted must also fit through every later step (the
  config models, the local copy's JSON, the spool), which recursion limits would not.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

from quart_trio.wrappers import TrioRequest

from .problem import Problem

__all__ = ["MAX_BODY", "MAX_DEPTH", "MAX_SNAPSHOT_BODY", "SNAPSHOT_PATHS", "JsonRequest"]

MAX_BODY = 1024 * 1024
MAX_SNAPSHOT_BODY = 16 * 1024 * 1024
MAX_DEPTH = 32
SNAPSHOT_PATHS = frozenset({"/config/sync", "/configs/sync"})

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def json_depth(text: str) -> int:
    """How deep ``text``'s arrays and objects nest (strings skipped), without parsing it."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    if len(brackets) <= 2 * MAX_DEPTH:
        opened = brackets.count("[") + brackets.count("{")
        if opened <= MAX_DEPTH:
            return opened
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def body_limit(path: str) -> int:
    return MAX_SNAPSHOT_BODY if path in SNAPSHOT_PATHS else MAX_BODY


class JsonRequest(TrioRequest):
    """Bodies are JSON: one without a content type is read as JSON (as older kits and curl
    send it); another type is a 415; malformed, empty, too large or too deep JSON a
    problem of its own (see the module docstring)."""

    async def get_json(self, force: bool = False, silent: bool = False, cache: bool = True) -> Any:
        if cache and self._cached_json[silent] is not Ellipsis:
            return self._cached_json[silent]
        mimetype = self.mimetype
        if not (force or not mimetype or mimetype == "application/json") and not (
            mimetype.endswith("+json")
        ):
            raise Problem(
                415,
                f"Send the body as application/json, not {mimetype}.",
                code="unsupported_media_type",
            )
        data = await self.get_data(cache, False, False)
        limit = body_limit(self.path)
        if len(data) > limit:  # a chunked body has no Content-Length to refuse early
            raise Problem(413, f"The body is larger than {limit} bytes.", code="body_too_large")
        result = _parse(data)
        if cache:
            self._cached_json[silent] = result
        return result


def _parse(data: bytes) -> Any:
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        raise Problem(400, f"The body is not UTF-8: {exc}", code="malformed_json") from None
    if not text.strip():
        raise Problem(400, "This route needs a JSON object body.", code="body_required")
    if json_depth(text) > MAX_DEPTH:
        raise Problem(
            400,
            f"The body nests deeper than {MAX_DEPTH} levels.",
            code="too_deep",
            hint=f"Flatten it: configs and commands need far fewer than {MAX_DEPTH} levels.",
        )
    try:
        return json.loads(text)
    except ValueError as exc:  # also integers of more than 4,300 digits
        raise Problem(400, f"The body is not valid JSON: {exc}", code="malformed_json") from None
