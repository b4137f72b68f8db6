import random

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime import RestartPolicy


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
