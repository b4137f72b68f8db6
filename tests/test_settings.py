"""Settings: the environment read once, every bad value a clear error naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.lowlevel import Settings


def test_the_environment_read_once() -> None:
    settings = Settings.from_env(
        {
            "PORT": "8123",
            "PIPHI_CORE_BASE_URL": "http://core:31419",
            "PIPHI_CONTAINER_ID": "ctr",
            "PIPHI_INTEGRATION_INTERNAL_TOKEN": "tok",
            "PIPHI_STATE_DIR": "/data",
            "PIPHI_CONFIG_SNAPSHOT_PATH": "/mnt/s.json",
            "PIPHI_LOG_LEVEL": "debug",
            "PIPHI_LOG_FORMAT": "JSON",
            "PIPHI_DURABILITY": "write-ahead",
            "PIPHI_MEMORY_LIMIT_MB": "256",
            "PIPHI_METRICS_PER_DEVICE_CAP": "50",
        }
    )
    assert (settings.port, settings.container_id, settings.token) == (8123, "ctr", "tok")
    assert (settings.state_dir, settings.snapshot_path) == (Path("/data"), Path("/mnt/s.json"))
    assert (settings.log_level, settings.log_format, settings.durability) == (
        "DEBUG",
        "json",
        "write_ahead",
    )
    assert (settings.memory_limit_mb, settings.metrics_per_device_cap) == (256, 50)
    defaults = Settings.from_env({"HOME": "/home/u"})
    assert (defaults.port, defaults.durability, defaults.log_format) == (None, "memory", "text")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "eighty"),
        ("PIPHI_LOG_LEVEL", "loud"),
        ("PIPHI_LOG_FORMAT", "xml"),
        ("PIPHI_DURABILITY", "sometimes"),
        ("PIPHI_MEMORY_LIMIT_MB", "-1"),
        ("PIPHI_METRICS_PER_DEVICE_CAP", "many"),
    ],
)
def test_a_bad_value_names_its_variable(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name.replace("PIPHI_", "") if name == "PORT" else name):
        Settings.from_env({name: value})


def test_no_module_but_settings_reads_the_environment() -> None:
    root = Path(__file__).resolve().parent.parent / "runtime"
    readers = [
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if "os.environ" in path.read_text() and path.name not in ("_settings.py", "_plugin.py")
    ]
    assert readers == [], readers
