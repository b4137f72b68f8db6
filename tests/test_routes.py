"""The route contract, driven in process against a real local Core (runtime.testing.FakeCore)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime import ActorState
from runtime._web import RUNTIME_KEY
from runtime._web.commands import command_fingerprint
from runtime.testing import FakeCore
from tests.helpers import wait_until
from tests.served import (
    CORE_HEADERS,
    CORE_TOKEN,
    INTEGRATION,
    SECRET,
    Served,
    env_for,
    fresh_served,
    serve,
    snapshot,
)


async def test_a_snapshot_becomes_actors_and_telemetry_reaches_core(
    served: Served, autojump_clock: trio.abc.Clock
) -> None:
    status, body = await served.post(
        "/config/sync",
        snapshot(
            1,
            {"id": "p1", "configId": "uuid-p1", "device_type": "probe"},
            {"id": "q1", "config_id": "uuid-q1", "device_type": "push"},
            containerId="ctr-1",
            integrationId="test-int",
        ),
        headers=CORE_HEADERS,
    )
    assert status == 200
    assert body["status"] == "synced"
    assert body["applied"] == ["p1", "q1"]
    assert body["active_config_ids"] == ["p1", "q1"]
    assert body["container_id"] == "ctr-1"
    await trio.sleep(5)
    telemetry = served.core.telemetry()
    assert {(t["config_id"], t["device_id"]) for t in telemetry} == {
        ("uuid-p1", "p1"),
        ("uuid-q1", "q1"),
    }
    assert {(t["container_id"], t["integration_id"]) for t in telemetry} == {("ctr-1", "test-int")}
    headers = {(r.container_id, r.token) for r in served.core.received}
    assert headers == {("ctr-1", CORE_TOKEN)}
    configured = [e for e in served.core.events() if e["type"] == "device.configured"]
    assert {e["config_id"] for e in configured} == {"uuid-p1", "uuid-q1"}


async def test_both_sync_paths_and_stale_generations(
    served: Served, autojump_clock: trio.abc.Clock
) -> None:
    assert (await served.post("/config/sync", snapshot(5, {"id": "a"})))[1]["status"] == "synced"
    status, body = await served.post("/configs/sync", snapshot(4, {"id": "b"}))
    assert (status, body["status"]) == (200, "stale_ignored")
    assert body["active_config_ids"] == ["a"]
    status, body = await served.post(
        "/configs/sync", {"generation": 6, "configs": [{"id": "b"}], "deletedConfigIds": ["a"]}
    )
    assert body["removed"] == ["a"] and body["applied"] == ["b"]


async def test_config_and_deconfigure_in_every_shape(
    served: Served, autojump_clock: trio.abc.Clock
) -> None:
    for config_id in ("a", "b", "c", "d", "e"):
        status, body = await served.post("/config", {"id": config_id, "configId": f"u-{config_id}"})
        assert (status, body["status"], body["config_id"]) == (200, "configured", config_id)
        assert body["metadata"]["action"] == "added"
    assert (await served.post("/config", {"id": "a", "configId": "u-a"}))[1]["metadata"][
        "action"
    ] == "unchanged"
    shapes: list[tuple[str, Any]] = [
        ("/deconfigure", {"config": {"id": "a"}}),
        ("/deconfigure", {"config": {"config_id": "b"}}),
        ("/deconfigure", {"config_id": "c"}),
        ("/deconfigure", {"configId": "u-d"}),
        ("/deconfigure/e", None),
    ]
    for path, body in shapes:
        status, reply = await served.post(path, body)
        assert status == 200, (path, body, reply)
        assert reply["status"] == "deconfigured"
        assert reply["removed"] is True, (path, body)
    status, reply = await served.post("/deconfigure", {"config_id": "nope"})
    assert (status, reply["removed"]) == (200, False)
    assert served.runtime.sync.active_config_ids == ()
    status, problem = await served.post("/deconfigure", {})
    assert status == 422 and problem["code"] == "config_id_required"


async def test_an_invalid_config_is_422_with_field_paths(
    served: Served, autojump_clock: trio.abc.Clock
) -> None:
    status, problem = await served.post("/config", {"id": "a", "poll_interval_seconds": -1})
    assert status == 422
    assert problem["code"] == "invalid_config"
    assert problem["status"] == 422
    assert problem["errors"][0]["loc"] == ["poll_interval_seconds"]
    assert served.runtime.sync.active_config_ids == ()


async def test_state_and_refresh_receipts(served: Served, autojump_clock: trio.abc.Clock) -> None:
    await served.post(
        "/config/sync", snapshot(1, {"id": "p1"}, {"id": "q1", "device_type": "push"})
    )
    await trio.sleep(2.5)
    status, body = await served.get("/state")
    assert status == 200
    entry = body["entries"]["p1"]
    assert entry["config_id"] == "p1" and entry["device_id"] == "p1"
    assert entry["latest_state"]["n"] >= 2
    assert entry["last_updated"].endswith("+00:00")

    status, body = await served.get("/state?refresh=true&refresh_request_id=R1&config_id=p1")
    receipt = body["refresh"]
    assert (receipt["request_id"], receipt["performed"], receipt["status"]) == (
        "R1",
        True,
        "refreshed",
    )
    assert receipt["source"] and receipt["observed_at"].endswith("+00:00")

    status, body = await served.get("/state?refresh=true&refresh_request_id=R2&config_id=q1")
    assert (body["refresh"]["performed"], body["refresh"]["status"]) == (False, "unsupported")
    assert body["refresh"]["message"]

    status, problem = await served.get("/state?refresh=true")
    assert status == 400 and problem["code"] == "refresh_request_id_required"
    status, problem = await served.get("/state?config_id=ghost")
    assert status == 404


async def test_a_failing_refresh_says_failed(
    served: Served, autojump_clock: trio.abc.Clock
) -> None:
    await served.post("/config", {"id": "p1", "polls": ["ok"], "then": "down"})
    await trio.sleep(1.5)
    status, body = await served.get("/state?refresh=true&refresh_request_id=R3")
    assert status == 200
    assert (body["refresh"]["performed"], body["refresh"]["status"]) == (False, "failed")
    assert "no answer" in body["refresh"]["message"]


async def test_entities_default_to_one_per_device(
    served: Served, autojump_clock: trio.abc.Clock
) -> None:
    await served.post("/config", {"id": "p1", "configId": "u1"})
    await trio.sleep(1.5)
    status, body = await served.get("/entities")
    assert status == 200
    (entity,) = body["entities"]
    assert entity["config_id"] == "u1" and entity["device_id"] == "p1"
    assert entity["capabilities"] == ["n", "echo"]
    assert entity["available_commands"][0]["id"] == "echo"
    assert set(entity["dashboard"]) == {"allowed_widgets", "default_widget", "recommended_widgets"}
    for field in ("id", "name", "device_type", "device_class", "entity_type", "metadata"):
        assert field in entity
    assert body["commands"]["echo"]
    assert body["capabilities"]["n"]["kind"] == "sensor"


async def test_static_documents(served: Served, autojump_clock: trio.abc.Clock) -> None:
    status, ui = await served.get("/ui-config")
    assert status == 200
    assert ui == (await served.get("/ui"))[1]
    assert ui["uiSchema"]["api_key"] == {"ui:widget": "password"}
    assert "id" not in ui["schema"]["properties"]
    status, contract = await served.get("/contract")
    assert contract["integration_id"] == "test-int"
    assert set(contract["required"]) == {"health", "entities", "command", "config", "ui_config"}
    assert contract["endpoints"]["config_sync"] == "/config/sync"
    status, manifest = await served.get("/manifest.json")
    for field in ("manifest_version", "id", "name", "version", "runtime", "api", "capabilities"):
        assert field in manifest
    status, openapi = await served.get("/openapi.json")
    assert openapi["openapi"].startswith("3.1")
    for path in ("/health", "/config/sync", "/deconfigure/{config_id}", "/command", "/state"):
        assert path in openapi["paths"]
    page = await (await served.client.get("/docs")).get_data(as_text=True)
    assert "/openapi.json" in page and "<script" not in page and "cdn" not in page.lower()


async def test_discover_in_every_shape_never_echoes_secrets(
    served: Served, autojump_clock: trio.abc.Clock
) -> None:
    for method, path, kw in [
        ("post", "/discover", {"json": {"inputs": {"host": "10.0.0.9", "password": SECRET}}}),
        ("post", "/discovery", {"json": {"host": "10.0.0.9", "password": SECRET}}),
        ("get", "/discover", {"query_string": {"host": "10.0.0.9", "password": SECRET}}),
    ]:
        response = await getattr(served.client, method)(path, **kw)
        text = await response.get_data(as_text=True)
        assert response.status_code == 200, text
        assert json.loads(text)["devices"][0]["host"] == "10.0.0.9"
        assert SECRET not in text


async def test_commands_new_and_old_bodies(served: Served, autojump_clock: trio.abc.Clock) -> None:
    await served.post("/config", {"id": "p1", "configId": "u1"})
    await served.post("/config", {"id": "p2", "configId": "u2", "deviceId": "shared"})
    await served.post("/config", {"id": "p3", "configId": "u3", "deviceId": "shared"})
    await trio.sleep(1)
    new = {
        "contract_version": "automation.runtime.command.v1",
        "command": "echo",
        "target": {"config_id": "u1", "device_id": "p1"},
        "params": {"x": 1},
    }
    status, reply = await served.post("/command", new)
    assert status == 200
    assert reply == {
        "ok": True,
        "status": "success",
        "outcome": "succeeded",
        "command": "echo",
        "result": {"x": 1},
        "error": None,
        "retryable": False,
        "replayed": False,
    }
    status, reply = await served.post(
        "/command", {"command": "echo", "device_id": "p1", "args": {"y": 2}}
    )
    assert (status, reply["result"]) == (200, {"y": 2})
    status, reply = await served.post("/command", {"command": "echo", "entity_id": "u1:p1"})
    assert status == 200

    status, problem = await served.post("/command", {"command": "echo", "config_id": "ghost"})
    assert status == 404 and problem["ok"] is False
    status, problem = await served.post("/command", {"command": "echo", "device_id": "shared"})
    assert status == 409 and problem["candidates"] == ["u2", "u3"]
    status, problem = await served.post("/command", {"command": "launch", "config_id": "u1"})
    assert (status, problem["ok"], problem["error"]) == (400, False, "unsupported_command")
    # Probe declares no capabilities, so none is refused (tests/web/test_commands.py).
    status, reply = await served.post(
        "/command", {"command": "echo", "config_id": "u1", "capability": "warp"}
    )
    assert (status, reply["ok"]) == (200, True)
    status, reply = await served.post(
        "/command", {"command": "echo", "config_id": "u1", "args": {"fail": True}}
    )
    assert (status, reply["ok"], reply["status"], reply["outcome"]) == (
        502,
        False,
        "failed",
        "failed",
    )
    assert reply["error"]["code"] == "call_failed" and "may_have_run" not in reply
    status, problem = await served.post("/command", {"config_id": "u1"})
    assert status == 422 and problem["errors"][0]["path"] == "command"


async def test_an_idempotency_key_replays_and_never_reruns(
    served: Served, autojump_clock: trio.abc.Clock
) -> None:
    await served.post("/config", {"id": "p1"})
    await trio.sleep(1)
    probe = served.runtime.actors.get("p1")
    assert probe is not None
    body = {"command": "echo", "config_id": "p1", "args": {"n": 1}}
    headers = {"X-PiPhi-Idempotency-Key": "key-1"}
    first = await served.post("/command", body, headers=headers)
    runs = sum(1 for h, _ in probe.actor.calls if h == "command")  # type: ignore[attr-defined]
    again = await served.post("/command", body, headers=headers)
    body_key = await served.post("/command", {**body, "idempotency_key": "key-1"})
    assert first[1]["replayed"] is False
    assert again[0] == 200 and again[1] == {**first[1], "replayed": True}
    assert body_key[1]["replayed"] is True
    assert sum(1 for h, _ in probe.actor.calls if h == "command") == runs  # type: ignore[attr-defined]
    status, problem = await served.post("/command", {**body, "args": {"n": 2}}, headers=headers)
    assert status == 422 and problem["code"] == "idempotency_key_reused"


async def test_idempotency_survives_a_restart_and_unknown_outcomes_are_reported(
    core: FakeCore, tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    env = env_for(tmp_path, core)
    body = {"command": "echo", "config_id": "p1", "args": {"n": 1}}
    async with serve(core, env) as s:
        await s.post("/config", {"id": "p1"})
        await trio.sleep(1)
        first = await s.post("/command", body, headers={"X-PiPhi-Idempotency-Key": "k-done"})
        # An attempt that started but never recorded its outcome (the runtime was killed).
        await s.runtime.ledger.begin("k-lost", command_fingerprint("echo", "p1", {"n": 1}))
    async with serve(core, env) as s:
        await wait_until(lambda: s.runtime.actors.get("p1") is not None)
        replay = await s.post("/command", body, headers={"X-PiPhi-Idempotency-Key": "k-done"})
        assert replay[1] == {**first[1], "replayed": True}
        probe = s.runtime.actors.get("p1")
        assert probe is not None
        assert not [h for h, _ in probe.actor.calls if h == "command"]  # type: ignore[attr-defined]
        status, problem = await s.post(
            "/command", body, headers={"X-PiPhi-Idempotency-Key": "k-lost"}
        )
    assert (status, problem["code"], problem["replayed"]) == (409, "outcome_unknown", True)
    assert not [h for h, _ in probe.actor.calls if h == "command"]  # type: ignore[attr-defined]


async def test_managed_mode_refuses_requests_without_the_token(
    core: FakeCore, tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    env = env_for(
        tmp_path, core, PIPHI_INTEGRATION_INTERNAL_TOKEN=CORE_TOKEN, PIPHI_CONTAINER_ID="ctr-9"
    )
    async with serve(core, env) as s:
        assert (await s.get("/health"))[0] == 200
        for path in ("/state", "/diagnostics", "/entities", "/contract"):
            status, problem = await s.get(path)
            assert status == 401, path
            assert problem["code"] == "auth_required"
        status, _ = await s.get("/state", headers={"X-PiPhi-Integration-Token": "guess"})
        assert status == 401
        status, _ = await s.post(
            "/config", {"id": "a"}, headers={"X-PiPhi-Integration-Token": "other-token"}
        )
        assert status == 401
        assert s.runtime.sync.active_config_ids == ()
        status, _ = await s.post(
            "/config/sync",
            snapshot(1, {"id": "a"}, internal_token="replacement-token"),
            headers={"X-PiPhi-Integration-Token": CORE_TOKEN},
        )
        assert status == 200
        assert s.runtime.client.token_matches(CORE_TOKEN), "no request can replace the token"
        status, diag = await s.get(
            "/diagnostics", headers={"X-PiPhi-Integration-Token": CORE_TOKEN}
        )
        assert diag["diagnostics"]["auth"]["mode"] == "managed"
        assert diag["diagnostics"]["auth"]["token_source"] == "environment"


async def test_without_an_environment_token_only_an_applied_snapshot_teaches_auth(
    served: Served, autojump_clock: trio.abc.Clock
) -> None:
    client = served.runtime.client
    # /health is open: it neither needs nor teaches credentials; nor does any other
    # request in adopted mode, since anyone who reaches the port could send headers.
    await served.get("/health", headers={"X-Container-Id": "x", "X-PiPhi-Integration-Token": "y"})
    await served.get("/state", headers={"X-Container-Id": "x", "X-PiPhi-Integration-Token": "y"})
    await served.post("/config", {"id": "p1", "container_id": "x"}, headers={"X-Foo": "1"})
    assert client.container_id is None and not client.has_token
    # A refused snapshot (no generation) teaches nothing either.
    status, _ = await served.post("/config/sync", {"configs": []}, headers=CORE_HEADERS)
    assert status == 422
    assert client.container_id is None and not client.has_token
    # An applied one is Core speaking: its token (stripped) and container id are adopted.
    headers = {**CORE_HEADERS, "X-PiPhi-Integration-Token": f" {CORE_TOKEN} "}
    status, _ = await served.post("/config/sync", snapshot(2), headers=headers)
    assert status == 200
    assert client.token_matches(CORE_TOKEN), "stripped, then kept"
    assert client.container_id == "ctr-1"
    _, diag = await served.get("/diagnostics")
    auth = diag["diagnostics"]["auth"]
    assert (auth["mode"], auth["token_source"], auth["token_known"]) == ("adopted", "adopted", True)
    assert CORE_TOKEN not in json.dumps(diag)
    # A stale snapshot changes nothing; a newer one may rotate the token.
    status, body = await served.post("/config/sync", snapshot(1, internal_token="stale-token"))
    assert (status, body["status"]) == (200, "stale_ignored")
    assert client.token_matches(CORE_TOKEN)
    status, _ = await served.post("/config/sync", snapshot(3, internal_token="rotated-token"))
    assert status == 200
    assert client.token_matches("rotated-token")
    assert client.container_id == "ctr-1", "the first container id is kept"


async def test_secrets_never_appear_in_responses_or_logs(
    served: Served, autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await served.get("/state", headers=CORE_HEADERS)
    config = {
        "id": "p1",
        "password": SECRET,
        "apiKey": "key-" + SECRET,
        "url": f"http://admin:{SECRET}@10.0.0.5/api",
        "polls": ["crash"],
    }
    await served.post("/config", config)
    status, problem = await served.post(
        "/config", {**config, "id": "p2", "poll_interval_seconds": "x"}
    )
    assert status == 422
    served.runtime.actors.get("p1").actor.log.warning(  # type: ignore[union-attr]
        "connecting to %s with %s", config["url"], SECRET
    )
    await trio.sleep(3)
    texts = [json.dumps(problem)]
    for path in ("/state", "/diagnostics", "/events", "/entities", "/health"):
        texts.append(json.dumps((await served.get(path))[1]))
    texts.append(caplog.text)
    for text in texts:
        assert SECRET not in text
        assert CORE_TOKEN not in text
    assert "**********" in caplog.text


async def test_secrets_in_a_snapshot_are_scrubbed_from_logs_also_when_invalid(
    served: Served, autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    named, in_url, refused = "sync-pass-" + SECRET, "url-pass-" + SECRET, "bad-pass-" + SECRET
    good = {"id": "s1", "password": named, "url": f"http://admin:{in_url}@10.0.0.5/api"}
    bad = {"id": "s2", "api_key": refused, "poll_interval_seconds": "x"}
    status, _ = await served.post("/config/sync", snapshot(1, good, bad), headers=CORE_HEADERS)
    assert status == 200
    assert served.runtime.sync.active_config_ids == ("s1",)
    logging.getLogger("runtime.test").warning("values: %s %s %s", named, in_url, refused)
    assert caplog.text.count("**********") == 3
    assert SECRET not in caplog.text


@pytest.mark.parametrize(
    ("method", "path", "kw", "status", "code"),
    [
        (
            "post",
            "/config",
            {"data": "{nope", "headers": {"content-type": "application/json"}},
            400,
            "malformed_json",
        ),
        ("post", "/config", {"json": [1, 2]}, 422, "body_not_an_object"),
        (
            "post",
            "/config",
            {"data": "id=a", "headers": {"content-type": "text/plain"}},
            415,
            "unsupported_media_type",
        ),
        (
            "post",
            "/config",
            {"data": b"{}" + b" " * (1024 * 1024), "headers": {"content-type": "application/json"}},
            413,
            "body_too_large",
        ),
        ("get", "/no/such/route", {}, 404, None),
        ("get", "/config", {}, 405, None),
        ("post", "/config/sync", {"json": {"configs": "nope"}}, 422, "invalid_config"),
        ("post", "/config", {}, 400, "body_required"),
    ],
)
async def test_bad_input_is_problem_json_and_changes_nothing(
    served: Served,
    autojump_clock: trio.abc.Clock,
    method: str,
    path: str,
    kw: dict[str, Any],
    status: int,
    code: str | None,
) -> None:
    before = served.runtime.sync.active_config_ids
    response = await getattr(served.client, method)(path, **kw)
    assert response.status_code == status
    assert response.content_type == "application/problem+json"
    problem = await response.get_json()
    assert problem["status"] == status
    assert {"type", "title", "status", "detail"} <= problem.keys()
    if code:
        assert problem["code"] == code
    assert served.runtime.sync.active_config_ids == before


async def test_events_are_the_recent_local_events(
    served: Served, autojump_clock: trio.abc.Clock
) -> None:
    await served.post("/config", {"id": "p1", "polls": ["down"]})
    await trio.sleep(3)
    _, body = await served.get("/events")
    types = [e["event_type"] for e in body["events"]]
    assert types[:1] == ["device.configured"]
    assert "device.unavailable" in types and "device.available" in types
    event = body["events"][0]
    for field in (
        "event_type",
        "source",
        "payload",
        "device_id",
        "container_id",
        "integration_id",
        "config_id",
        "severity",
        "event_id",
        "ts",
        "topic",
        "received_at",
    ):
        assert field in event


async def test_diagnostics_filters(served: Served, autojump_clock: trio.abc.Clock) -> None:
    configs = ({"id": "good"}, {"id": "bad", "polls": ["crash"] * 20})
    await served.post("/config/sync", snapshot(1, *configs), headers=CORE_HEADERS)
    await trio.sleep(120)
    _, everything = await served.get("/diagnostics")
    assert {a["config_id"] for a in everything["diagnostics"]["actors"]} == {"good", "bad"}
    _, failed = await served.get("/diagnostics?state=failed")
    (sick,) = failed["diagnostics"]["actors"]
    assert sick["config_id"] == "bad"
    assert sick["last_error"]["hint"]
    _, one = await served.get("/diagnostics?device_id=good")
    (good,) = one["diagnostics"]["actors"]
    assert good["config_id"] == "good"
    assert good["delivery"]["delivered"] >= 100
    assert good["delivery"]["accepted"] >= good["delivery"]["delivered"]
    assert good["delivery"]["last_delivered"].endswith("+00:00")
    assert good["polls"] >= 100 and good["state"] == "running"
    _, health = await served.get("/health")
    assert health["status"] == "degraded" and health["ok"] is True


async def test_diagnostics_pages_actors_by_config_id(
    served: Served, autojump_clock: trio.abc.Clock
) -> None:
    ids = [f"dev{i:03d}" for i in range(250)]
    status, _ = await served.post(
        "/config/sync", snapshot(1, *({"id": i} for i in reversed(ids))), headers=CORE_HEADERS
    )
    assert status == 200
    await trio.sleep(5)
    seen: list[str] = []
    offset: int | None = 0
    while offset is not None:  # 3 pages of 100: bounded
        _, body = await served.get(f"/diagnostics?offset={offset}")
        diagnostics = body["diagnostics"]
        assert diagnostics["actors_by_state"] == {"running": 250}
        page = diagnostics["actors_page"]
        assert (page["matched"], page["offset"], page["limit"]) == (250, offset, 100)
        seen += [a["config_id"] for a in diagnostics["actors"]]
        offset = page["next_offset"]
    assert seen == ids, "every actor once, in config id order"
    _, small = await served.get("/diagnostics?limit=7&offset=245&state=running")
    assert [a["config_id"] for a in small["diagnostics"]["actors"]] == ids[245:]
    assert small["diagnostics"]["actors_page"]["next_offset"] is None
    for bad in ("limit=0", "limit=1001", "limit=ten", "offset=-1"):
        status, problem = await served.get(f"/diagnostics?{bad}")
        assert status == 400, bad
        assert problem["code"] == "bad_query_argument" and problem["hint"], bad


async def test_served_by_the_hypercorn_cli_the_app_opens_the_runtime_itself(
    core: FakeCore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    autojump_clock: trio.abc.Clock,
) -> None:
    for name, value in env_for(tmp_path, core).items():
        monkeypatch.setenv(name, value)
    app = INTEGRATION.app()
    async with app.test_app() as test_app:
        client = test_app.test_client()
        assert (await client.get("/health")).status_code == 200
        reply = await client.post(
            "/config/sync", json=snapshot(1, {"id": "p1"}), headers=CORE_HEADERS
        )
        assert reply.status_code == 200
        rt = app.extensions[RUNTIME_KEY]
        await trio.sleep(2)
        assert len(core.telemetry()) >= 1
    assert RUNTIME_KEY not in app.extensions
    assert rt.actors.get("p1") is None, "leaving the app stopped the actors"


async def test_health_says_503_when_the_runtime_is_not_up(autojump_clock: trio.abc.Clock) -> None:
    app = INTEGRATION.app()
    client = app.test_client()
    response = await client.get("/health")
    assert response.status_code == 503
    assert (await response.get_json())["ok"] is False
    response = await client.get("/state")
    assert response.status_code == 503
    assert (await response.get_json())["code"] == "runtime_unavailable"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
contract_keys = st.sampled_from(
    [
        "id",
        "config_id",
        "configId",
        "configs",
        "generation",
        "deleted_config_ids",
        "command",
        "target",
        "params",
        "args",
        "config",
        "inputs",
        "device_id",
        "poll_interval_seconds",
    ]
)
bodies = (
    json_values | st.dictionaries(contract_keys, json_values, max_size=5) | st.binary(max_size=40)
)
routes = st.sampled_from(
    [
        "/config",
        "/config/sync",
        "/configs/sync",
        "/deconfigure",
        "/deconfigure/x",
        "/command",
        "/discover",
        "/discovery",
    ]
)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(path=routes, body=bodies, content_type=st.sampled_from(["application/json", "text/plain"]))
async def test_random_bodies_never_crash_and_refusals_change_nothing(
    autojump_clock: trio.abc.Clock, path: str, body: Any, content_type: str
) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with fresh_served() as served:
        await served.post("/config", {"id": "existing"})
        before = served.runtime.sync.active_config_ids
        headers = {"content-type": content_type}
        response = await served.client.post(path, data=data, headers=headers)
        assert response.status_code < 500, await response.get_data(as_text=True)
        if response.status_code >= 400:
            assert response.content_type == "application/problem+json"
            assert served.runtime.sync.active_config_ids == before


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    path=st.sampled_from(["/state", "/diagnostics", "/events", "/entities", "/health"]),
    query=st.dictionaries(
        st.sampled_from(
            ["refresh", "refresh_request_id", "config_id", "state", "device_id", "offset", "limit"]
        ),
        st.text(max_size=10),
        max_size=3,
    ),
)
async def test_random_queries_never_crash(
    autojump_clock: trio.abc.Clock, path: str, query: dict[str, str]
) -> None:
    async with fresh_served() as served:
        await served.post("/config", {"id": "existing"})
        response = await served.client.get(path, query_string=query)
        assert response.status_code < 500, await response.get_data(as_text=True)


async def test_a_command_refused_unseen_is_not_recorded_so_a_retry_runs_it(
    served: Served, autojump_clock: trio.abc.Clock
) -> None:
    # Setup keeps crashing, so the actor spends its time backing off, with no session.
    await served.post("/config", {"id": "p1", "setups": ["crash"] * 6})
    await trio.sleep(0.1)
    headers = {"X-PiPhi-Idempotency-Key": "retry-me"}
    body = {"command": "echo", "config_id": "p1", "args": {"n": 1}}
    status, reply = await served.post("/command", body, headers=headers)
    assert (status, reply["ok"], reply["retryable"]) == (502, False, True)
    assert reply["error"]["code"] == "actor_not_ready"
    probe = served.runtime.actors.get("p1")
    assert probe is not None
    await wait_until(lambda: probe.state is ActorState.RUNNING)
    status, reply = await served.post("/command", body, headers=headers)
    assert (status, reply["ok"], reply["replayed"]) == (200, True, False)
    again = await served.post("/command", body, headers=headers)
    assert again[1]["replayed"] is True


async def test_every_openapi_reference_resolves(autojump_clock: trio.abc.Clock) -> None:
    from examples.lan_weather import integration as lan_weather

    for integration in (INTEGRATION, lan_weather):
        response = await integration.app().test_client().get("/openapi.json")
        document = await response.get_json()
        text = json.dumps(document)
        assert "#/$defs/" not in text
        refs = {part.split('"')[0] for part in text.split('"$ref": "#/components/schemas/')[1:]}
        assert refs <= set(document["components"]["schemas"]), refs
