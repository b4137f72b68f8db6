import pytest

from runtime import __version__
from runtime._cli import main


def test_check_describes_an_actor_class(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "actors.simulated:SimulatedThermostat"]) == 0
    out = capsys.readouterr().out
    assert "poll actor" in out
    assert "poll interval 1 s" in out
    assert "set_setpoint" in out


@pytest.mark.parametrize(
    ("target", "words"),
    [
        ("actors.simulated", "module:ClassName"),
        ("no_such_module:X", "cannot import"),
        ("actors.simulated:Nope", "no attribute"),
        ("actors.simulated:SimulatedConfig", "not a DeviceActor"),
        ("runtime:DeviceActor", "neither poll() nor run()"),
    ],
)
def test_check_explains_what_is_wrong(
    target: str, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", target]) == 2
    assert words in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert __version__ in capsys.readouterr().out
