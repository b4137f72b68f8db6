"""Payloads over ``MAX_PAYLOAD_BYTES`` are refused where the actor makes them (issue 15,
item 4): ``report()`` and ``emit_event()`` raise, a poll's result is recorded as the poll's
error, and nothing of it reaches the sink."""

from __future__ import annotations

import pytest
import trio

from runtime import (
    MAX_PAYLOAD_BYTES,
    DeviceActor,
    InvalidEvent,
    InvalidReading,
    Reading,
    RuntimeConfig,
)
from runtime._reading import validate_readings
from runtime.lowlevel import open_actor_nursery
from runtime.testing import RecordingSink

BIG = "x" * MAX_PAYLOAD_BYTES


class Chatty(DeviceActor[RuntimeConfig]):
    poll_interval = 1.0

    def __init__(self, config: RuntimeConfig) -> None:
        super().__init__(config)
        self.errors: list[Exception] = []

    async def poll(self) -> list[Reading]:
        try:
            self.report([Reading("dump", BIG)])
        except InvalidReading as exc:
            self.errors.append(exc)
        try:
            self.emit_event("dump", {"blob": BIG})
        except InvalidEvent as exc:
            self.errors.append(exc)
        self.report([Reading("ok", 1)])
        return [Reading("huge", BIG)]


def test_a_batch_too_large_for_one_payload_is_refused() -> None:
    fits = [Reading(f"m{n}", "y" * 1000) for n in range(200)]  # about 200 kB
    assert len(validate_readings(fits, source="poll()")) == 200
    with pytest.raises(InvalidReading) as info:
        validate_readings([*fits, Reading("more", "z" * 60_000)], source="report()")
    assert "report()" in info.value.message and "MAX_PAYLOAD_BYTES" in info.value.message
    assert "split" in info.value.hint
    # Escaped characters count as encoded: 50,000 of them take six bytes each in JSON.
    with pytest.raises(InvalidReading):
        validate_readings([Reading("escaped", "\x01" * 50_000)], source="poll()")


async def test_an_actor_learns_at_once_and_nothing_large_is_sent(
    autojump_clock: trio.abc.Clock,
) -> None:
    sink = RecordingSink()
    async with open_actor_nursery(sink) as actors:
        running = actors.spawn(Chatty, {"id": "chatty"})
        await trio.sleep(1.5)
        health = running.health()
        errors = list(running.actor.errors)  # type: ignore[attr-defined]
        running_actor_records = sink.telemetry_for("chatty")
    assert [type(e) for e in errors[:2]] == [InvalidReading, InvalidEvent]
    assert all("MAX_PAYLOAD_BYTES" in e.message for e in errors)
    assert health.last_error is not None
    assert health.last_error.code == "invalid_reading" and health.last_error.phase == "poll"
    assert {r.readings[0].metric for r in running_actor_records} == {"ok"}
    assert not [e for e in sink.events() if e.event_type == "dump"]
