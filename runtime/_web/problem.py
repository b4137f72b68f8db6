"""RFC 9457 problem details: the body of every 4xx and 5xx the runtime answers.

A route raises ``Problem``; the app's error handlers (``app.py``) turn it, validation
errors and HTTP errors alike, into one ``ProblemDocument``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from pydantic import ValidationError
from quart import Response

from .._contract import PROBLEM_JSON, PROBLEM_TYPE_BASE, FieldError, ProblemDocument
from .._errors import PiPhiError
from .._redact import redact

__all__ = ["Problem", "field_errors", "problem_response"]


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
        errors: Sequence[FieldError] | None = None,
        extra: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        phrase = HTTPStatus(status).phrase
        self.status = status
        self.detail = detail
        self.code = code or _slug(phrase)
        self.title = title or phrase
        self.hint = hint
        self.errors = list(errors) if errors is not None else None
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})

    @classmethod
    def from_error(cls, status: int, error: PiPhiError, **extra: Any) -> Problem:
        """The problem for a runtime error: its code, message and hint, its details."""
        body = error.to_dict()
        for field in ("code", "message", "hint"):
            body.pop(field, None)
        errors = body.pop("errors", None)
        return cls(
            status,
            error.message,
            code=error.code,
            hint=error.hint,
            errors=field_errors(errors) if errors is not None else None,
            extra={**body, **extra},
        )

    def document(self) -> ProblemDocument:
        extra = {k: v for k, v in self.extra.items() if k not in ProblemDocument.model_fields}
        return ProblemDocument(
            type=PROBLEM_TYPE_BASE + self.code,
            title=self.title,
            status=self.status,
            detail=self.detail,
            code=self.code,
            hint=self.hint,
            errors=self.errors,
            **extra,
        )


def problem_response(problem: Problem) -> Response:
    body = redact(problem.document().model_dump(mode="json", exclude_none=True))
    return Response(
        json.dumps(body), status=problem.status, content_type=PROBLEM_JSON, headers=problem.headers
    )


def field_errors(errors: ValidationError | Sequence[Mapping[str, Any]]) -> list[FieldError]:
    """Pydantic's errors as ``FieldError``s, without input values (an input may be a
    secret). Field paths are snake_case: the contract's models report them that way."""
    if isinstance(errors, ValidationError):
        errors = errors.errors(include_url=False, include_input=False, include_context=False)
    return [
        FieldError(
            loc=list(error.get("loc", ())),
            path=".".join(str(part) for part in error.get("loc", ())),
            msg=str(error.get("msg", "")),
            type=str(error.get("type", "value_error")),
        )
        for error in errors
    ]


def _slug(text: str) -> str:
    return text.lower().replace(" ", "_").replace("-", "_").replace("'", "")
