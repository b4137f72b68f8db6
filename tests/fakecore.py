"""A real HTTP server on 127.0.0.1 standing in for PiPhi Core in delivery tests.

Plain trio + h11 (tests/h11server.py), so its behaviour is entirely the test's: it can
refuse connections (its listener closed, the port kept), answer a given status with
headers, or answer slowly. It records every payload it accepted, with the auth headers
it came with.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
import trio

from tests.h11server import Answer, H11Server


@attrs.define
class Received:
    path: str
    body: dict[str, Any]
    container_id: str | None
    token: str | None


class FakeCore(H11Server):
    """Run with ``await nursery.start(core.serve)``; then ``core.url`` is its base URL."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[Received] = []
        self.requests = 0
        self.status = 200
        self.headers: list[tuple[str, str]] = []
        self.delay = 0.0
        self.token: str | None = None
        """When set, requests without this token get 401."""
        self.configs: list[dict[str, Any]] = []
        self.answer: Callable[[str, dict[str, Any]], int | None] | None = None
        """Per request: ``answer(path, body)`` may return a status to answer instead."""
        self.attempts: list[tuple[str, dict[str, Any]]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def telemetry(self) -> list[dict[str, Any]]:
        return [r.body for r in self.received if r.path.endswith("/telemetry")]

    def events(self) -> list[dict[str, Any]]:
        return [r.body for r in self.received if r.path.endswith("/ingest")]

    async def respond(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> Answer | None:
        self.requests += 1
        path = target.split("?")[0]
        payload_in = json.loads(body) if body else None
        if payload_in is not None:
            self.attempts.append((target, payload_in))
        if self.delay:
            await trio.sleep(self.delay)
        status, extra = self.status, list(self.headers)
        if self.answer is not None and payload_in is not None:
            chosen = self.answer(path, payload_in)
            if chosen is not None:
                status = chosen
        if self.token is not None and headers.get("x-piphi-integration-token") != self.token:
            status, extra = 401, []
        payload: Any = {}
        if 200 <= status < 300:
            if method == "GET" and "/config/fetch/" in path:
                payload = self.configs
            else:
                self.received.append(
                    Received(
                        path=path,
                        body=payload_in,
                        container_id=headers.get("x-container-id"),
                        token=headers.get("x-piphi-integration-token"),
                    )
                )
        return status, [("content-type", "application/json"), *extra], json.dumps(payload).encode()
