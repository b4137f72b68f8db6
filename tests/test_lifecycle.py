import itertools

import pytest

from runtime import ActorState
from runtime._lifecycle import TRANSITIONS, check_transition
from runtime.lowlevel import IllegalTransition, can_transition

S = ActorState


def test_the_table_covers_every_state() -> None:
    assert set(TRANSITIONS) == set(ActorState)


def test_stopped_is_terminal_and_every_other_state_can_stop() -> None:
    assert TRANSITIONS[S.STOPPED] == frozenset()
    for state in set(ActorState) - {S.STOPPED, S.STOPPING}:
        assert can_transition(state, S.STOPPING)
    assert TRANSITIONS[S.STOPPING] == {S.STOPPED}


def test_every_state_is_reachable_from_starting() -> None:
    seen, todo = {S.STARTING}, [S.STARTING]
    while todo:
        for nxt in TRANSITIONS[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    assert seen == set(ActorState)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (S.BACKOFF, S.RUNNING),
        (S.FAILED, S.RUNNING),
        (S.STOPPED, S.STARTING),
        (S.RUNNING, S.STARTING),
        (S.RUNNING, S.RUNNING),
        (S.STOPPING, S.RUNNING),
        (S.NEEDS_RECONFIGURATION, S.RUNNING),
        (S.NEEDS_RECONFIGURATION, S.BACKOFF),
        (S.BACKOFF, S.NEEDS_RECONFIGURATION),
    ],
)
def test_illegal_transitions_raise_as_bugs(current: ActorState, target: ActorState) -> None:
    assert not can_transition(current, target)
    with pytest.raises(IllegalTransition, match=f"{current.value} -> {target.value}"):
        check_transition(current, target)


def test_can_transition_agrees_with_check_transition_everywhere() -> None:
    for current, target in itertools.product(ActorState, repeat=2):
        if can_transition(current, target):
            check_transition(current, target)
        else:
            with pytest.raises(IllegalTransition):
                check_transition(current, target)
