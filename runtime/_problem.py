"""RFC 9457 problem details: the body of every 4xx and 5xx the runtime answers."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from pydantic import ValidationError
from quart import Response

from ._errors import PiPhiError
from ._redact import redact

__all__ = ["PROBLEM_JSON", "Problem", "problem_response", "validation_errors"]

PROBLEM_JSON = "application/problem+json"
_TYPE_BASE = "https://piphi.network/problems/"


class Problem(Exception):
    """Raise from a route to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        code: str | None = None,
        title: str | None = None,
        hint: str | None = None,
        errors: Sequence[Mapping[str, Any]] | None = None,
        extra: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.code = code or _slug(HTTPStatus(status).phrase)
        self.title = title or HTTPStatus(status).phrase
        self.hint = hint
        self.errors = list(errors) if errors is not None else None
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})

    @classmethod
    def from_error(cls, status: int, error: PiPhiError, **extra: Any) -> Problem:
        body = error.to_dict()
        for field in ("code", "message", "hint"):
            body.pop(field, None)
        errors = body.pop("errors", None)
        return cls(
            status,
            error.message,
            code=error.code,
            hint=error.hint,
            errors=errors,
            extra={**body, **extra},
        )

    def body(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "type": _TYPE_BASE + self.code,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if self.hint:
            document["hint"] = self.hint
        if self.errors is not None:
            document["errors"] = self.errors
        for key, value in self.extra.items():
            document.setdefault(key, value)
        return redact(document)  # type: ignore[no-any-return]


def problem_response(problem: Problem) -> Response:
    return Response(
        json.dumps(problem.body(), default=str),
        status=problem.status,
        content_type=PROBLEM_JSON,
        headers=problem.headers,
    )


def validation_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """Pydantic's errors as ``{loc, msg, type}`` with dotted paths, without input values
    (an input may be a secret)."""
    return [
        {
            "loc": list(error["loc"]),
            "path": ".".join(str(part) for part in error["loc"]),
            "msg": error["msg"],
            "type": error["type"],
        }
        for error in exc.errors(include_url=False, include_input=False, include_context=False)
    ]


def _slug(text: str) -> str:
    return text.lower().replace(" ", "_").replace("-", "_").replace("'", "")
