import json
from datetime import UTC, datetime
from typing import Any

import pytest
import trio

from runtime._health import PollTimings, wall_clock
from runtime.lowlevel import ErrorRecord


def test_percentiles_are_nearest_rank_over_the_last_64_polls() -> None:
    timings = PollTimings()
    assert timings.percentiles() == (None, None) and timings.last is None
    for ms in range(1, 101):  # only the last 64 (37..100 ms) count
        timings.add(ms / 1000)
    p50, p95 = timings.percentiles()
    assert p50 == pytest.approx(0.068, abs=1e-6)
    assert p95 == pytest.approx(0.097, abs=1e-6)
    assert timings.last == pytest.approx(0.1)


def test_one_sample_is_every_percentile() -> None:
    timings = PollTimings()
    timings.add(0.25)
    assert timings.percentiles() == (0.25, 0.25)


async def test_wall_clock_follows_the_trio_clock(autojump_clock: Any) -> None:
    then = trio.current_time()
    await trio.sleep(90)
    converted = wall_clock(then)
    assert converted is not None and converted.tzinfo is UTC
    assert (datetime.now(UTC) - converted).total_seconds() == pytest.approx(90, abs=1)
    assert wall_clock(None) is None


async def test_error_records_serialise_with_an_iso_time(autojump_clock: Any) -> None:
    record = ErrorRecord(
        type="RuntimeError",
        message="boom",
        code="actor_exception",
        hint="h",
        phase="poll",
        at=trio.current_time(),
    )
    body = json.loads(json.dumps(record.to_dict()))
    assert body["phase"] == "poll" and datetime.fromisoformat(body["at"]).tzinfo is not None
