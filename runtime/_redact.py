"""Redaction: secrets never leave the runtime in a response, an error or a log line.

A value is secret when its key names one (``password``, ``passphrase``, ``secret``,
``token``, ``credential``, ``key``, and as whole words ``pwd``, ``pin``, ``auth``: any
case, so ``apiKey``, ``api_key``, ``X-Api-Key`` and ``wifi_pin`` count, ``mapping`` does
not), when it is a pydantic ``SecretStr``, or when it is the user-info part of a URL
(``http://user:p@ss@host`` shows as ``http://***@host``).

Free text (log lines, error messages) is scrubbed by value: each runtime keeps a
``SecretValues`` of every secret it was configured with (its token, secret config fields,
URL passwords), with no cap and whatever their length (short ones are matched as whole
tokens, so masking a PIN of ``42`` does not garble every number). Secrets a request
merely carries (discovery inputs, command arguments) are masked in answers by key but not
remembered, so nobody who can reach the port can grow the set. ``redact_text`` scrubs
with every live runtime's values: logs are the process's, whichever runtime wrote them.
"""

from __future__ import annotations

import functools
import re
import threading
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import SecretBytes, SecretStr

__all__ = ["MASK", "SecretValues", "is_secret_key", "redact", "redact_text"]

MASK = "**********"
#: Matched anywhere in a key: long enough never to be an accident.
_SECRET_PARTS = ("password", "passwd", "passphrase", "secret", "token", "credential", "key")
#: Matched as whole words of a key only ("pin" is in "mapping", "auth" in "author").
_SECRET_WORDS = frozenset({"pwd", "pin", "auth", "authorization"})
_WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
# Greedy up to the last "@" before the path: a password may hold "@" itself.
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/\s?#]+)@")
#: Secrets shorter than this are matched only as whole tokens in free text.
_SHORT = 4


@functools.lru_cache(maxsize=4096)
def _secret_name(name: str) -> bool:
    text = name.lower()
    if any(part in text for part in _SECRET_PARTS):
        return True
    return any(word.lower() in _SECRET_WORDS for word in _WORD.findall(name))


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
    """Mask URL credentials and every live runtime's secret values inside ``text``."""
    if "@" in text:
        text = _URL_USERINFO.sub(r"\g<scheme>***@", text)
    for values in tuple(_LIVE):
        text = values.scrub(text)
    return text


class SecretValues:
    """The secret strings one runtime was configured with, scrubbed from free text.

    Live from ``open()`` to ``close()`` (the runtime's lifetime): ``redact_text`` uses the
    values of every live set, and closing one leaves the others' untouched."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        # Compiled on the next scrub, not on every add: a first snapshot can bring
        # thousands of secrets. The lock keeps a scrub in a worker thread from storing a
        # pattern built before a concurrent add.
        self._pattern: re.Pattern[str] | None = None
        self._stale = False
        self._lock = threading.Lock()

    def open(self) -> SecretValues:
        _LIVE.add(self)
        return self

    def close(self) -> None:
        _LIVE.discard(self)

    def __len__(self) -> int:
        return len(self._values)

    def add(self, value: object) -> None:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str) and value.strip() and value not in self._values:
            with self._lock:
                self._values.add(value)
                self._stale = True

    def collect(self, value: Any) -> None:
        """Remember every secret inside a config: by key, ``SecretStr``, URL password."""
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
                self.add(match.group("userinfo").partition(":")[2])

    def scrub(self, text: str) -> str:
        if self._stale:
            with self._lock:
                if self._stale:
                    self._pattern = _pattern(self._values)
                    self._stale = False
        pattern = self._pattern
        return pattern.sub(MASK, text) if pattern is not None else text


def _pattern(values: Iterable[str]) -> re.Pattern[str] | None:
    """One regex for every value, as a trie, so a line is scanned once whatever their
    number (an alternation of thousands of literals tries each at every position)."""
    long: list[str] = []
    short: list[str] = []
    for value in values:
        (short if len(value) < _SHORT else long).append(value)
    parts = []
    if long:
        parts.append(_trie(long))
    if short:
        parts.append(rf"(?<![0-9A-Za-z])(?:{_trie(short)})(?![0-9A-Za-z])")
    return re.compile("|".join(parts)) if parts else None


def _trie(values: Iterable[str]) -> str:
    root: dict[str, Any] = {}
    for value in values:
        node = root
        for char in value:
            node = node.setdefault(char, {})
        node[""] = {}
    return _node_regex(root)


def _node_regex(node: dict[str, Any]) -> str:
    # Longest match first: an alternative that ends here comes after those that go on.
    ends = "" in node
    branches = [re.escape(char) + _node_regex(child) for char, child in node.items() if char]
    if not branches:
        return ""
    body = branches[0] if len(branches) == 1 and not ends else f"(?:{'|'.join(branches)})"
    return f"{body}?" if ends else body


_LIVE: weakref.WeakSet[SecretValues] = weakref.WeakSet()
