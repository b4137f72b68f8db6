"""The runtime's logs: never a secret, one line per record, one format everywhere.

Redaction must hold whoever configures logging (``serve``, hypercorn's CLI, the author's
own ``dictConfig`` after start-up) and whoever owns the process. Handlers come and go
with each configuration, so the filter sits on the loggers that write: the runtime's own
(``runtime.*``), each actor class's module logger, httpx's and httpcore's, and
hypercorn's. A logger's filters only see the records it creates itself, so each one is
named, not just their parents; the root logger's handlers get the filter too, as a
second net for every other logger. The filter masks every live runtime's secrets and URL
credentials and escapes CR/LF, so no device id or vendor text can forge a log line.
People who bring their own handlers can add ``RedactingFormatter`` as a second net.

Configuring handlers is the process owner's business: ``configure()`` is what ``serve``
and the CLI do (and the app under hypercorn's CLI when nothing configured logging):
``PIPHI_LOG_LEVEL`` (default INFO) and ``PIPHI_LOG_FORMAT`` (``text``, or ``json``: one
object per line with ``device_id``/``config_id``/``event`` where the record has them).
httpx's one INFO line per request is off unless the level is DEBUG.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ._redact import redact_text

if TYPE_CHECKING:
    from ._settings import Settings

__all__ = [
    "RedactingFilter",
    "RedactingFormatter",
    "configure",
    "protect",
    "protect_known",
    "runtime_logger",
]

#: Loggers other libraries write to that may quote a secret (a URL with a key in it).
THIRD_PARTY = (
    "httpx",
    "httpcore",
    "httpcore.connection",
    "httpcore.http11",
    "hypercorn.error",
    "hypercorn.access",
)
#: Fields of a record (``extra=``) the formats show.
CONTEXT = ("device_id", "config_id", "event")


class RedactingFilter(logging.Filter):
    """Masks secrets in a record's message and traceback, and escapes CR/LF."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = _one_line(redact_text(message))
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            clean_exc = redact_text(text)
            if clean_exc != text:
                record.msg = f"{record.msg}\n{clean_exc}"
                record.exc_info = None
                record.exc_text = None
        return True


_FILTER = RedactingFilter()


def protect(logger: logging.Logger) -> logging.Logger:
    """Put the redacting filter on ``logger`` (once); returns it."""
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger


def runtime_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)``, protected: how the runtime's modules get theirs."""
    return protect(logging.getLogger(name))


def protect_known() -> None:
    """Protect the third-party loggers the runtime's work writes to, and, as a second
    net for every other logger, the handlers the root logger has now."""
    for name in THIRD_PARTY:
        protect(logging.getLogger(name))
    for handler in logging.getLogger().handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)


def _one_line(text: str) -> str:
    if "\n" in text or "\r" in text:
        return text.replace("\r", "\\r").replace("\n", "\\n")
    return text


class RedactingFormatter(logging.Formatter):
    """The default text format (time, level, logger, device, message), scrubbed once more
    as a whole: for handlers of your own, ``handler.setFormatter(RedactingFormatter())``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(context)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.context = _context_text(record)
        return redact_text(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's context."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in CONTEXT:
            value = getattr(record, field, None)
            if value is not None:
                body[field] = value
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return redact_text(json.dumps(body, default=str))


def _context_text(record: logging.LogRecord) -> str:
    parts = [f"{f}={getattr(record, f)}" for f in CONTEXT if getattr(record, f, None)]
    return f" [{' '.join(parts)}]" if parts else ""


def configure(settings: Settings, *, force: bool = True) -> None:
    """Install the runtime's handler on the root logger: the process owner's opt-in.

    With ``force=False`` it does nothing when logging is configured already (the app
    under hypercorn's CLI must not undo the operator's own configuration)."""
    root = logging.getLogger()
    if not force and root.handlers:
        protect_known()
        return
    level = settings.log_level
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else RedactingFormatter())
    handler.addFilter(_FILTER)
    logging.basicConfig(level=level, handlers=[handler], force=True)
    quiet = logging.DEBUG if level == "DEBUG" else logging.WARNING
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(quiet)
    for name in ("hypercorn.error", "hypercorn.access"):
        hypercorn = logging.getLogger(name)
        # Its own console handler (its format, no redaction) would print every line
        # twice; a log file its operator chose stays.
        for own in [h for h in hypercorn.handlers if type(h) is logging.StreamHandler]:
            hypercorn.removeHandler(own)
        hypercorn.propagate = True
    protect_known()
