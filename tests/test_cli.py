import os
import subprocess
import sys
from pathlib import Path

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


PLUG_MODULE = """
from runtime import DeviceActor, Integration, Reading, RuntimeConfig


class Plug(DeviceActor[RuntimeConfig]):
    async def poll(self) -> list[Reading]:
        return [Reading("on", True)]


integration = Integration(id="first-hour", name="First hour", version="0.1.0", actor=Plug)
"""


def test_check_and_serve_find_a_module_in_the_working_directory_or_app_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "myproject"
    folder.mkdir()
    (folder / "firsthour_plug.py").write_text(PLUG_MODULE)
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(folder))])
    assert main(["check", "firsthour_plug:Plug"]) == 0, capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    sys.modules.pop("firsthour_plug", None)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(folder)])
    assert main(["check", "firsthour_plug:Plug"]) == 2
    assert "--app-dir" in capsys.readouterr().err
    assert main(["check", "firsthour_plug:Plug", "--app-dir", str(folder)]) == 0


@pytest.mark.slow
def test_serve_as_the_readme_prints_it_from_a_fresh_shell(tmp_path: Path) -> None:
    # The console script, run from the repository: examples/ must be importable.
    env = {**os.environ, "PORT": "eighty"}
    script = Path(sys.executable).parent / "piphi-runtime"
    result = subprocess.run(
        [str(script), "serve", "examples.simulated_home:integration"],
        cwd=Path(__file__).resolve().parent.parent, env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    # It imported the module (no "No module named 'examples'") and only then refused PORT.
    assert "No module named" not in result.stderr
    assert "PORT must be an integer" in result.stderr


def test_serve_help_says_why_it_binds_every_interface(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "default 0.0.0.0: Core reaches the container from outside it" in text
    assert "127.0.0.1" in text
