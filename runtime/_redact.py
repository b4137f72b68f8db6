"""Redaction: secrets never leave the runtime in a response, an error or a log line.

A value is secret when its key contains ``password``, ``secret``, ``token``, ``key`` or
``credential`` (any case; ``apiKey``, ``api_key`` and ``X-Api-Key`` all count), when it is
a pydantic ``SecretStr``, or when it is the user-info part of a URL
(``http://user:pass@host`` shows as ``http://***@host``).

Logs are scrubbed by value: ``SecretValues`` remembers every secret the runtime has seen
(the token, secret config fields) and ``RedactingFilter`` replaces them in any record
before it is emitted, whatever logger wrote it.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import weakref
from collections.abc import Mapping
from typing import Any

from pydantic import SecretBytes, SecretStr

__all__ = ["MASK", "RedactingFilter", "SecretValues", "is_secret_key", "redact", "secrets"]

MASK = "**********"
_SECRET_WORDS = ("password", "secret", "token", "key", "credential")
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")


@functools.lru_cache(maxsize=4096)
def _secret_name(name: str) -> bool:
    text = name.lower()
    return any(word in text for word in _SECRET_WORDS)


def is_secret_key(key: object) -> bool:
    return _secret_name(key if isinstance(key, str) else str(key))


def redact(value: Any) -> Any:
    """A copy of ``value`` with every secret masked; safe to show anyone."""
    kind = type(value)
    if kind is int or kind is float or kind is bool or value is None:
        return value  # the common leaves first: ABC checks below are slow
    if kind is str:
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: MASK if is_secret_key(k) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, SecretStr | SecretBytes):
        return MASK
    if isinstance(value, str):
        return redact_text(value)
    return value


def redact_text(text: str) -> str:
    """Mask URL credentials and every remembered secret value inside ``text``."""
    if "@" in text:
        text = _URL_USERINFO.sub(r"\g<scheme>***@", text)
    return secrets.scrub(text)


class SecretValues:
    """The secret strings seen so far, to be scrubbed from free text such as log lines."""

    #: Shorter values are not scrubbed: masking "1" everywhere would garble every log.
    MIN_LENGTH = 4
    #: Enough for every secret of a large integration; beyond it new values are not
    #: remembered (the key-name and URL rules still apply), so the set stays bounded.
    MAX_VALUES = 1024

    def __init__(self) -> None:
        self._values: set[str] = set()
        # Compiled on the next scrub, not on every add: a first snapshot can bring hundreds
        # of secrets, and recompiling per value was quadratic. The lock keeps a scrub in a
        # worker thread from storing a pattern built before a concurrent add.
        self._pattern: re.Pattern[str] | None = None
        self._stale = False
        self._lock = threading.Lock()

    def add(self, value: object) -> None:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if (
            isinstance(value, str)
            and len(value) >= self.MIN_LENGTH
            and value not in self._values
            and len(self._values) < self.MAX_VALUES
        ):
            with self._lock:
                self._values.add(value)
                self._stale = True

    def collect(self, value: Any) -> None:
        """Remember every secret inside a config or request body."""
        if isinstance(value, Mapping):
            for k, v in value.items():
                if is_secret_key(k) and isinstance(v, str | SecretStr):
                    self.add(v)
                else:
                    self.collect(v)
        elif isinstance(value, list | tuple):
            for v in value:
                self.collect(v)
        elif isinstance(value, SecretStr):
            self.add(value)
        elif isinstance(value, str) and "@" in value:
            for match in _URL_USERINFO.finditer(value):
                password = match.group("userinfo").partition(":")[2]
                self.add(password)

    def scrub(self, text: str) -> str:
        if self._stale:
            with self._lock:
                if self._stale:
                    ordered = sorted(self._values, key=len, reverse=True)
                    self._pattern = re.compile("|".join(re.escape(v) for v in ordered))
                    self._stale = False
        pattern = self._pattern
        return pattern.sub(MASK, text) if pattern is not None else text


#: The process's one set: a secret seen by any runtime must not appear in any log.
secrets = SecretValues()


class RedactingFilter(logging.Filter):
    """Masks secrets in a record's final message, once it is formatted."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message)
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


_installed: weakref.WeakSet[logging.Handler] = weakref.WeakSet()


def install_log_redaction() -> None:
    """Add the filter to every handler of the root logger (idempotent)."""
    for handler in logging.getLogger().handlers:
        if handler not in _installed:
            handler.addFilter(RedactingFilter())
            _installed.add(handler)
