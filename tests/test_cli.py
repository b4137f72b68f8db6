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


def test_serve_help_says_why_it_binds_every_interface(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "default 0.0.0.0: Core reaches the container from outside it" in text
    assert "127.0.0.1" in text
