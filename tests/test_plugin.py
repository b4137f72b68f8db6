"""The pytest plugin costs nothing when unused: loading it imports none of the runtime."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("trio", "httpx", "pydantic", "quart", "hypercorn", "runtime._actor", "runtime._web")


def test_loading_the_plugin_imports_nothing_heavy() -> None:
    script = (
        "import sys, pytest; import runtime._plugin; "
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]", result.stdout


def test_the_entry_point_is_the_light_module() -> None:
    from importlib.metadata import entry_points

    (plugin,) = [e for e in entry_points(group="pytest11") if e.name == "piphi_runtime"]
    assert plugin.value == "runtime._plugin"
