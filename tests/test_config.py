import pytest

from runtime import InvalidConfig, RuntimeConfig
from runtime._config import PollInterval, validate_config


class PlugConfig(RuntimeConfig):
    host: str
    poll_interval_seconds: PollInterval = 10.0


def test_identities_fall_back_to_the_local_id_only_when_core_sent_none() -> None:
    bare = RuntimeConfig(id="local-1")
    assert bare.identity.config_id == "local-1" and bare.identity.device_id == "local-1"
    full = RuntimeConfig.model_validate(
        {"id": "l", "configId": "cfg", "deviceId": "dev", "containerId": "c", "integrationId": "i"}
    )
    ident = full.identity
    assert (
        ident.id,
        ident.config_id,
        ident.device_id,
        ident.container_id,
        ident.integration_id,
    ) == ("l", "cfg", "dev", "c", "i")


def test_snake_and_camel_case_are_both_accepted_and_answered_in_snake_case() -> None:
    snake = PlugConfig.model_validate({"id": "p", "config_id": "c", "host": "10.0.0.5"})
    camel = PlugConfig.model_validate({"id": "p", "configId": "c", "host": "10.0.0.5"})
    assert snake == camel
    assert snake.model_dump()["config_id"] == "c"


def test_vendor_fields_are_kept_and_configs_are_immutable() -> None:
    config = RuntimeConfig.model_validate({"id": "p", "vendorSerial": "XK-1"})
    assert config.model_dump()["vendorSerial"] == "XK-1"
    with pytest.raises(ValueError, match="frozen"):
        config.id = "q"  # type: ignore[misc]


def test_numeric_ids_become_strings() -> None:
    assert RuntimeConfig.model_validate({"id": 42}).id == "42"


def test_poll_interval_is_optional_on_the_base_and_defaultable_in_subclasses() -> None:
    assert RuntimeConfig(id="x").poll_interval_seconds is None
    assert PlugConfig(id="x", host="h").poll_interval_seconds == 10.0
    assert (
        PlugConfig.model_validate(
            {"id": "x", "host": "h", "pollIntervalSeconds": 2}
        ).poll_interval_seconds
        == 2
    )


@pytest.mark.parametrize("interval", [0, -1, float("inf"), float("nan"), "soon"])
def test_bad_poll_intervals_are_rejected(interval: object) -> None:
    with pytest.raises(InvalidConfig):
        validate_config(RuntimeConfig, {"id": "x", "poll_interval_seconds": interval})


def test_validate_config_reports_the_config_id_and_every_field_error() -> None:
    with pytest.raises(InvalidConfig) as info:
        validate_config(PlugConfig, {"id": "plug-7", "poll_interval_seconds": -1})
    error = info.value
    assert error.details["config_id"] == "plug-7"
    fields = {tuple(e["loc"]) for e in error.details["errors"]}
    assert fields == {("host",), ("poll_interval_seconds",)}
    assert "plug-7" in error.message and "host" in error.message
    body = error.to_dict()
    assert body["code"] == "invalid_config" and body["config_id"] == "plug-7"


def test_validate_config_rejects_a_missing_or_empty_id() -> None:
    for data in ({}, {"id": ""}, "not a mapping"):
        with pytest.raises(InvalidConfig):
            validate_config(RuntimeConfig, data)


def test_validate_config_passes_instances_through_and_converts_base_configs() -> None:
    plug = PlugConfig(id="p", host="h")
    assert validate_config(PlugConfig, plug) is plug
    base = RuntimeConfig.model_validate({"id": "p", "host": "h"})
    assert validate_config(PlugConfig, base) == plug


def test_a_missing_field_is_named_in_snake_case_even_with_camel_case_input() -> None:
    class Hub(RuntimeConfig):
        api_key: str

    with pytest.raises(InvalidConfig) as caught:
        validate_config(Hub, {"id": "h", "pollIntervalSeconds": 5})
    assert [e["loc"] for e in caught.value.details["errors"]] == [("api_key",)]
