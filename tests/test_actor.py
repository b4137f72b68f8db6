import ast
import logging
import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import runtime
from runtime import (
    DeviceActor,
    InvalidActor,
    InvalidEvent,
    InvalidReading,
    Reading,
    RuntimeConfig,
    command,
)
from runtime.lowlevel import ActorNotAttached
from runtime.testing import RecordingSink

from .helpers import ProbeConfig


class PlugConfig(RuntimeConfig):
    host: str = "10.0.0.9"


class Plug(DeviceActor[PlugConfig]):
    async def poll(self) -> list[Reading]:
        return [Reading("is_on", True)]

    @command("turn_on", description="Switch on", timeout=3)
    async def turn_on(self, args: Mapping[str, Any]) -> dict[str, bool]:
        return {"is_on": True}


def test_the_config_model_comes_from_the_type_parameter() -> None:
    assert Plug.config_model is PlugConfig
    assert Plug.mode == "poll"


def test_commands_are_collected_and_inherited() -> None:
    class SmartPlug(Plug):
        @command("turn_off")
        async def turn_off(self, args: Mapping[str, Any]) -> dict[str, bool]:
            return {"is_on": False}

    assert set(Plug.commands) == {"turn_on"}
    assert set(SmartPlug.commands) == {"turn_on", "turn_off"}
    spec = SmartPlug.commands["turn_on"]
    assert (spec.method, spec.description, spec.timeout) == ("turn_on", "Switch on", 3)


def test_an_intermediate_generic_base_keeps_its_subclasses_parameter() -> None:
    from typing import TypeVar

    C = TypeVar("C", bound=RuntimeConfig)

    class VendorBase(DeviceActor[C]):
        pass

    class Thermo(VendorBase[ProbeConfig]):
        async def poll(self) -> list[Reading]:
            return []

    assert VendorBase.mode is None and VendorBase.config_model is RuntimeConfig
    assert Thermo.config_model is ProbeConfig


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("async def poll(self): return []\n    async def run(self): pass", "both poll() and run()"),
        ("def poll(self): return []", "must be 'async def'"),
        (
            "async def poll(self): return []\n    poll_interval = 0",
            "poll_interval must be a positive",
        ),
        ("async def poll(self): return []\n    stop_timeout = float('inf')", "stop_timeout"),
        ("async def poll(self): return []\n    poll_timeout = float('inf')", "poll_timeout"),
        ("async def poll(self): return []\n    poll_timeout = 0", "poll_timeout"),
    ],
)
def test_malformed_actor_classes_fail_at_definition(body: str, words: str) -> None:
    source = f"class Bad(DeviceActor):\n    {body}\n"
    with pytest.raises(InvalidActor, match=re.escape(words)):
        exec(source, {"DeviceActor": DeviceActor})


def test_duplicate_or_sync_commands_fail_at_definition() -> None:
    with pytest.raises(InvalidActor, match="twice"):

        class Twice(DeviceActor[RuntimeConfig]):
            @command("go")
            async def a(self, args: Any) -> None: ...

            @command("go")
            async def b(self, args: Any) -> None: ...

    with pytest.raises(InvalidActor, match="async def"):
        command("go")(lambda self, args: None)  # type: ignore[arg-type,return-value]
    for bad_name in ("", "  "):
        with pytest.raises(InvalidActor, match="non-empty"):
            command(bad_name)
    with pytest.raises(InvalidActor, match="timeout"):
        command("go", timeout=0)


def test_an_actor_needs_poll_or_run_and_a_config_of_its_model() -> None:
    class Abstract(DeviceActor[RuntimeConfig]):
        pass

    with pytest.raises(InvalidActor, match="override poll"):
        Abstract(RuntimeConfig(id="x"))
    with pytest.raises(InvalidActor, match="needs a PlugConfig"):
        Plug(RuntimeConfig(id="x"))  # type: ignore[arg-type]


async def test_an_actor_can_be_exercised_directly_without_a_runtime() -> None:
    plug = Plug(PlugConfig(id="p"))
    assert await plug.poll() == [Reading("is_on", True)]
    assert await plug.turn_on({}) == {"is_on": True}
    with pytest.raises(ActorNotAttached, match="not running under a supervisor"):
        plug.report([Reading("x", 1)])


def test_output_methods_validate_their_arguments_before_anything_is_sent() -> None:
    plug = Plug(PlugConfig(id="p"))
    with pytest.raises(InvalidReading, match="timezone-aware"):
        plug.report([Reading("x", 1)], timestamp=datetime(2026, 1, 1))
    with pytest.raises(InvalidReading, match="device_id"):
        plug.report([Reading("x", 1)], device_id="")
    with pytest.raises(InvalidReading, match="got dict"):
        plug.report({"x": 1})  # type: ignore[arg-type]
    with pytest.raises(InvalidEvent, match="event type"):
        plug.emit_event("")
    with pytest.raises(InvalidEvent, match="severity"):
        plug.emit_event("x", severity="fatal")  # type: ignore[arg-type]
    with pytest.raises(InvalidEvent, match="mapping"):
        plug.emit_event("x", data=[1])  # type: ignore[arg-type]
    with pytest.raises(InvalidReading, match="string keys"):
        plug.publish_state({1: "x"})  # type: ignore[dict-item]


def test_the_logger_is_bound_to_the_device(caplog: pytest.LogCaptureFixture) -> None:
    plug = Plug(PlugConfig(id="p", device_id="dev-9", config_id="cfg-9"))
    with caplog.at_level(logging.INFO):
        plug.log.info("connected to %s", "10.0.0.9")
    (record,) = caplog.records
    assert record.getMessage() == "[dev-9] connected to 10.0.0.9"
    assert record.name == __name__
    assert (record.device_id, record.config_id) == ("dev-9", "cfg-9")  # type: ignore[attr-defined]
    assert plug.log is plug.log


def test_recording_sink_filters() -> None:
    sink = RecordingSink(limit=2)
    assert sink.events() == [] and sink.telemetry_for("x") == []


def _relative_imports(module: str) -> set[str]:
    """The runtime modules ``runtime/<module>.py`` (or the package ``runtime/<module>/``)
    imports, TYPE_CHECKING blocks included."""
    root = Path(runtime.__file__).parent
    package = root / module
    files, level = (
        (sorted(package.glob("*.py")), 2) if package.is_dir() else ([root / f"{module}.py"], 1)
    )
    return {
        (node.module or "__init__").split(".")[0]
        for file in files
        for node in ast.walk(ast.parse(file.read_text()))
        if isinstance(node, ast.ImportFrom) and node.level == level
    }


def test_the_actor_module_never_reaches_the_supervisor_module() -> None:
    # Actors reach their supervisor only through the ActorOutputs protocol: neither
    # _actor.py nor anything it imports, at any depth, imports _supervisor.py.
    seen, todo = {"_actor"}, ["_actor"]
    while todo:
        for imported in _relative_imports(todo.pop()) - seen:
            seen.add(imported)
            todo.append(imported)
    assert "_supervisor" not in seen, sorted(seen)
    assert "__init__" not in seen, "a module under _actor imports the package"


def test_output_methods_hand_their_output_to_whatever_is_attached() -> None:
    class Outputs:
        def __init__(self) -> None:
            self.seen: list[tuple[str, Any]] = []

        def on_state(self, state: Mapping[str, Any]) -> None:
            self.seen.append(("state", dict(state)))

        def on_report(self, batch: Any, device_id: Any, observed_at: Any) -> None:
            self.seen.append(("report", (batch, device_id, observed_at)))

        def on_event(self, event_type: str, data: Any, severity: Any, device_id: Any) -> str:
            self.seen.append(("event", (event_type, data, severity, device_id)))
            return "e-1"

    plug = Plug(PlugConfig(id="p"))
    outputs = Outputs()
    plug._outputs = outputs
    plug.publish_state({"on": True})
    plug.report([Reading("is_on", True)], device_id="child")
    assert plug.emit_event("plug.clicked", {"n": 1}, severity="warning") == "e-1"
    assert outputs.seen == [
        ("state", {"on": True}),
        ("report", ((Reading("is_on", True),), "child", None)),
        ("event", ("plug.clicked", {"n": 1}, "warning", None)),
    ]


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda p: p.publish_state({"t": float("nan")}), InvalidReading),
        (lambda p: p.publish_state({"t": [1.0, float("inf")]}), InvalidReading),
        (lambda p: p.publish_state({"when": datetime(2026, 1, 1)}), InvalidReading),
        (lambda p: p.publish_state({"deep": _nested(20)}), InvalidReading),
        (lambda p: p.emit_event("x", {"ratio": float("-inf")}), InvalidEvent),
        (lambda p: p.emit_event("x", {1: "key not a string"}), InvalidEvent),
        (lambda p: p.emit_event("x" * 200), InvalidEvent),
        (lambda p: p.emit_event("line\nbreak"), InvalidEvent),
        (lambda p: p.report([Reading("m" * 129, 1)]), InvalidReading),
        (lambda p: p.report([Reading("tab\there", 1)]), InvalidReading),
    ],
)
def test_what_is_not_json_everywhere_is_refused_at_the_source(call: Any, error: type) -> None:
    plug = Plug(PlugConfig(id="p"))
    sent: list[Any] = []
    plug._outputs = type("Outputs", (), {
        "on_state": lambda self, s: sent.append(s),
        "on_report": lambda self, *a: sent.append(a),
        "on_event": lambda self, *a: sent.append(a) or "e",
    })()  # fmt: skip
    with pytest.raises(error):
        call(plug)
    assert sent == [], "nothing reached the supervisor"


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"k": value}
    return value
