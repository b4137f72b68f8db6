"""RFC 9457 problem details: the body of every 4xx and 5xx."""

from __future__ import annotations

from pydantic import ConfigDict

from .wire import Answer

__all__ = ["PROBLEM_JSON", "PROBLEM_TYPE_BASE", "FieldError", "ProblemDocument"]

PROBLEM_JSON = "application/problem+json"
PROBLEM_TYPE_BASE = "https://piphi.network/problems/"


class FieldError(Answer):
    """One invalid field: ``loc`` as a list, ``path`` dotted, both snake_case."""

    loc: list[str | int]
    path: str
    msg: str
    type: str


class ProblemDocument(Answer):
    """``type`` is ``PROBLEM_TYPE_BASE + code``. Some routes add fields of their own (a
    refused command carries ``ok: false`` and ``error``, as the contract asks)."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    code: str
    hint: str | None = None
    errors: list[FieldError] | None = None
