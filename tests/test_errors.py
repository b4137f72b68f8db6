import pickle

import pytest

import runtime
import runtime.delivery
import runtime.lowlevel
from runtime import DeviceUnavailable, InvalidReading, PiPhiError, ReconfigurationRequired
from runtime.lowlevel import ActorBusy, ActorCallError, CallTimeout, IllegalTransition, PollTimeout


def test_str_shows_the_message_the_code_and_the_hint() -> None:
    error = DeviceUnavailable("no answer from 10.0.0.5")
    assert (
        str(error)
        == f"no answer from 10.0.0.5 [device_unavailable] (hint: {DeviceUnavailable.default_hint})"
    )


def test_an_instance_can_carry_its_own_hint_and_details() -> None:
    error = CallTimeout("slow", hint="try later", details={"started": False})
    assert error.to_dict() == {
        "code": "call_timeout",
        "message": "slow",
        "hint": "try later",
        "started": False,
    }


def test_every_error_is_a_piphi_error_with_a_distinct_stable_code() -> None:
    classes = [
        getattr(namespace, name)
        for namespace in (runtime, runtime.lowlevel, runtime.delivery)
        for name in namespace.__all__
    ]
    errors = [c for c in classes if isinstance(c, type) and issubclass(c, PiPhiError)]
    assert len(errors) >= 18
    codes = [e.code for e in errors]
    assert len(codes) == len(set(codes)), "codes must be unique"
    for cls in errors:
        assert cls.code.islower() and " " not in cls.code
        assert cls.default_hint.endswith(".")


def test_the_hierarchy_lets_callers_catch_by_family() -> None:
    assert issubclass(PollTimeout, DeviceUnavailable)
    assert issubclass(ActorBusy, ActorCallError) and ActorBusy.retryable
    assert issubclass(InvalidReading, ValueError)
    assert issubclass(IllegalTransition, RuntimeError)


@pytest.mark.parametrize(
    "error",
    [
        DeviceUnavailable("x", hint="h"),
        CallTimeout("y", details={"started": True}),
        ReconfigurationRequired(reason="auth_rejected", hint="Set the password."),
    ],
)
def test_errors_survive_pickling(error: PiPhiError) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and copy.to_dict() == error.to_dict()


def test_reconfiguration_required_carries_its_reason_and_is_no_outage() -> None:
    error = ReconfigurationRequired(reason="auth_rejected", hint="Set the password in PiPhi.")
    assert (error.reason, error.code, error.hint) == (
        "auth_rejected",
        "reconfiguration_required",
        "Set the password in PiPhi.",
    )
    assert error.to_dict()["reason"] == "auth_rejected" and "auth_rejected" in error.message
    assert not isinstance(error, DeviceUnavailable), "retrying cannot help: not an outage"
    assert pickle.loads(pickle.dumps(error)).reason == "auth_rejected"
    with pytest.raises(ValueError, match="reason"):
        ReconfigurationRequired(reason=" ")
