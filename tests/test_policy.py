import random

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime import RestartPolicy
from runtime._policy import RestartTracker


def test_defaults_match_the_documented_ones() -> None:
    policy = RestartPolicy()
    assert (policy.initial_delay, policy.max_delay, policy.max_restarts, policy.restart_window) == (
        1,
        60,
        5,
        60,
    )
    assert policy.reset_after != policy.initial_delay


def test_ceilings_double_up_to_the_cap() -> None:
    policy = RestartPolicy(initial_delay=0.5, max_delay=10)
    assert [policy.ceiling(n) for n in range(8)] == [0.5, 1, 2, 4, 8, 10, 10, 10]
    assert policy.ceiling(10_000) == 10


@given(st.integers(min_value=0, max_value=5000), st.integers(min_value=0))
def test_delays_are_full_jitter_within_the_ceiling(attempt: int, seed: int) -> None:
    policy = RestartPolicy()
    delay = policy.delay(attempt, random.Random(seed))
    assert 0 <= delay <= policy.ceiling(attempt)


def test_policies_are_immutable_and_derived_with_evolve() -> None:
    policy = RestartPolicy()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        policy.max_delay = 5  # type: ignore[misc]
    patient = attrs.evolve(policy, max_restarts=10)
    assert patient.max_restarts == 10 and policy.max_restarts == 5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_delay": 0},
        {"max_delay": -1},
        {"multiplier": 0.5},
        {"initial_delay": 5, "max_delay": 1},
        {"max_restarts": -1},
        {"reset_after": float("inf")},
        {"restart_window": float("nan")},
    ],
)
def test_nonsense_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - attrs and our checks word it differently
        RestartPolicy(**kwargs)  # type: ignore[arg-type]


def test_negative_attempts_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match="attempt"):
        RestartPolicy().ceiling(-1)


# -- RestartTracker: the bookkeeping, without trio ------------------------------------------


class Top(random.Random):
    """Full jitter at its ceiling: the waits are the ceilings themselves."""

    def random(self) -> float:
        return 1.0


def crash_at(tracker: RestartTracker, *times: float) -> list[bool]:
    return [tracker.crashed(t) for t in times]


def test_backoff_attempts_grow_until_a_healthy_stretch_resets_them() -> None:
    tracker = RestartTracker(RestartPolicy(initial_delay=1, max_delay=8, reset_after=30))
    assert [tracker.next_delay(Top()) for _ in range(5)] == [1, 2, 4, 8, 8]
    tracker.succeeded(100.0)
    tracker.forget_if_healthy(110.0)  # 10 s healthy is not enough
    assert tracker.next_delay(Top()) == 8
    tracker.succeeded(200.0)
    tracker.succeeded(215.0)  # a second success does not move the start
    tracker.forget_if_healthy(230.0)
    assert (tracker.attempt, tracker.healthy_since) == (0, None)
    assert tracker.next_delay(Top()) == 1


def test_more_restarts_than_allowed_in_the_window_mark_failed_once() -> None:
    tracker = RestartTracker(RestartPolicy(max_restarts=3, restart_window=60))
    assert crash_at(tracker, 0, 1, 3, 7, 15) == [False, False, False, True, False]
    assert tracker.failed and tracker.restarts_total == 5 and tracker.consecutive == 5
    assert tracker.restarts_in_window(15) == 5
    assert tracker.restarts_in_window(62) == 3  # those at 3, 7 and 15 s
    # Failed retries wait at the cap, less up to a fifth of jitter.
    assert 48 <= tracker.next_delay(random.Random(1)) <= 60


def test_restarts_spread_wider_than_the_window_never_fail() -> None:
    tracker = RestartTracker(RestartPolicy(max_restarts=2, restart_window=10))
    assert not any(crash_at(tracker, *(11.0 * n for n in range(20))))
    assert tracker.restarts_in_window(11.0 * 19) == 1


def test_a_long_healthy_stretch_clears_failed_and_the_window() -> None:
    tracker = RestartTracker(RestartPolicy(max_restarts=1, reset_after=30))
    assert crash_at(tracker, 0, 1) == [False, True]
    tracker.healthy_from(5.0)
    tracker.forget_if_healthy(40.0)
    assert not tracker.failed and tracker.restarts_in_window(40) == 0
    assert tracker.restarts_total == 2, "the total is history, never reset"


def test_offline_misses_count_as_failures_but_not_as_restarts() -> None:
    tracker = RestartTracker(RestartPolicy())
    tracker.missed()
    tracker.missed()
    assert (tracker.consecutive, tracker.restarts_total, tracker.failed) == (2, 0, False)
    tracker.succeeded(3.0)
    assert tracker.consecutive == 0 and tracker.healthy_since == 3.0


def test_a_repeated_crash_is_recognised_until_health_resets_it() -> None:
    tracker = RestartTracker(RestartPolicy(reset_after=30))
    key = ("RuntimeError", "boom")
    assert not tracker.repeated(key)
    assert tracker.repeated(key)
    assert not tracker.repeated(("RuntimeError", "other"))
    tracker.succeeded(0.0)
    tracker.forget_if_healthy(31.0)
    assert not tracker.repeated(("RuntimeError", "other"))
