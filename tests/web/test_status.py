"""The status page's routes: the page and its assets open, the data behind the token in
managed mode, paging, filters and search, problem+json on bad queries, secrets masked, a
device's detail with its health history. The page in a browser: ``test_status_browser.py``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import trio
from pydantic import SecretStr

from runtime import DeviceActor, Integration, Reading, RuntimeConfig
from runtime._web.history import HealthHistory
from runtime.testing import FakeCore
from tests.helpers import Probe
from tests.served import CORE_HEADERS, CORE_TOKEN, Push, Served, env_for, serve

FLEET = Integration(
    id="fleet",
    name="Fleet",
    version="2.0.0",
    actors={"probe": Probe, "push": Push},
    select_field="device_type",
    actor=Probe,
)


class VaultConfig(RuntimeConfig):
    password: str
    api_key: SecretStr
    url: str = "http://admin:url-pass-9876@nas.local/api"


class Vault(DeviceActor[VaultConfig]):
    """A device that quotes its secrets wherever it can: in state, readings and errors."""

    async def poll(self) -> list[Reading]:
        self.publish_state({"session_token": "tok-" + self.config.password, "mode": "eco"})
        if self.config.password.endswith("!"):
            raise RuntimeError(f"login refused for password {self.config.password}")
        return [Reading("banner", f"logged in with {self.config.password}")]


EVERY_S = {"poll_interval_seconds": 1}
VAULT = Integration(id="vault", name="Vault", version="1.0.0", actor=Vault)


async def configure(served: Served, *configs: dict[str, Any]) -> None:
    for config in configs:
        status, body = await served.post("/config", config)
        assert status == 200, body


async def test_the_page_and_its_assets_are_open_and_carry_no_data(
    core: FakeCore, tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    env = env_for(tmp_path, core, PIPHI_INTEGRATION_INTERNAL_TOKEN=CORE_TOKEN)
    async with serve(core, env, FLEET) as served:
        await configure_with_token(served, {"id": "secret-device-name", "device_type": "probe"})
        for path, kind in (
            ("/status", "text/html"),
            ("/status/static/status.css", "text/css"),
            ("/status/static/status.js", "text/javascript"),
        ):
            response = await served.client.get(path)
            assert response.status_code == 200, path
            assert response.content_type.startswith(kind)
            assert "script-src 'self'" in response.headers["Content-Security-Policy"]
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            text = (await response.get_data()).decode()
            assert "secret-device-name" not in text
        page = (await (await served.client.get("/status")).get_data()).decode()
        assert "/status/static/status.js" in page
        assert "<script>" not in page  # no inline script: the policy forbids it


async def configure_with_token(served: Served, *configs: dict[str, Any]) -> None:
    for config in configs:
        status, body = await served.post("/config", config, headers=CORE_HEADERS)
        assert status == 200, body


async def test_the_data_needs_the_token_in_managed_mode(
    core: FakeCore, tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    env = env_for(tmp_path, core, PIPHI_INTEGRATION_INTERNAL_TOKEN=CORE_TOKEN)
    async with serve(core, env, FLEET) as served:
        await configure_with_token(served, {"id": "p1", "device_type": "probe"})
        for path in ("/status/data", "/status/device/p1", "/status/static/other.js"):
            response = await served.client.get(path)
            assert response.status_code == 401, path
            assert response.content_type == "application/problem+json"
            assert (await response.get_json())["code"] == "auth_required"
            wrong = {"X-PiPhi-Integration-Token": "not-the-token"}
            assert (await served.client.get(path, headers=wrong)).status_code == 401
        token = {"X-PiPhi-Integration-Token": CORE_TOKEN}
        status, body = await served.get("/status/data", headers=token)
        assert status == 200
        assert body["summary"]["mode"] == "managed"
        assert [r["config_id"] for r in body["rows"]] == ["p1"]
        status, body = await served.get("/status/device/p1", headers=token)
        assert (status, body["row"]["config_id"]) == (200, "p1")


@pytest.mark.parametrize(
    "query",
    [
        {"limit": "0"},
        {"limit": "501"},
        {"limit": "ten"},
        {"offset": "-1"},
        {"state": "sleeping"},
        {"q": "x" * 201},
    ],
)
async def test_a_bad_query_is_a_problem(
    served: Served, query: dict[str, str], autojump_clock: trio.abc.Clock
) -> None:
    response = await served.client.get("/status/data", query_string=query)
    assert response.status_code == 400
    assert response.content_type == "application/problem+json"
    problem = await response.get_json()
    assert problem["code"] == "bad_query_argument"
    assert [e["path"] for e in problem["errors"]] == list(query)


async def test_an_unknown_device_or_asset_is_a_problem(
    served: Served, autojump_clock: trio.abc.Clock
) -> None:
    for path, code in (
        ("/status/device/nope", "unknown_device"),
        ("/status/static/secrets.txt", "not_found"),
    ):
        response = await served.client.get(path)
        assert response.status_code == 404, path
        assert response.content_type == "application/problem+json"
        assert (await response.get_json())["code"] == code


async def test_rows_are_paged_by_config_id(
    core: FakeCore, tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    async with serve(core, env_for(tmp_path, core), FLEET) as served:
        await configure(served, *({"id": f"dev-{n:02}"} for n in reversed(range(25))))
        await trio.sleep(2)
        status, body = await served.get("/status/data", query_string={"limit": "10"})
        assert status == 200
        assert [r["config_id"] for r in body["rows"]] == [f"dev-{n:02}" for n in range(10)]
        assert body["page"] == {"matched": 25, "offset": 0, "limit": 10, "next_offset": 10}
        _, body = await served.get("/status/data", query_string={"limit": "10", "offset": "20"})
        assert [r["config_id"] for r in body["rows"]] == [f"dev-{n:02}" for n in range(20, 25)]
        assert body["page"]["next_offset"] is None
        _, body = await served.get("/status/data", query_string={"offset": "1000"})
        assert (body["rows"], body["page"]["matched"]) == ([], 25)
        _, body = await served.get("/status/data")
        assert body["page"]["limit"] == 100
        assert body["summary"]["by_state"] == {"running": 25}
        assert body["summary"]["runtime"]["devices"] == 25
        assert body["refresh_s"] > 0


async def test_filters_by_state_and_searches_ids(
    core: FakeCore, tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    async with serve(core, env_for(tmp_path, core), FLEET) as served:
        await configure(
            served,
            {"id": "kitchen-plug", "then": "ok"},
            {"id": "Garage-Door", "device_id": "door-77", "then": "down"},
            {"id": "cellar-sensor", "then": "down"},
            {"id": "pushy", "device_type": "push"},
        )
        await trio.sleep(3)
        _, body = await served.get("/status/data", query_string={"state": "unavailable"})
        assert [r["config_id"] for r in body["rows"]] == ["Garage-Door", "cellar-sensor"]
        assert body["summary"]["by_state"] == {"running": 2, "unavailable": 2}
        assert body["filters"] == {"state": "unavailable", "q": None}
        for q, found in (
            ("garage", ["Garage-Door"]),  # any case
            ("DOOR-7", ["Garage-Door"]),  # the device id
            ("e", ["Garage-Door", "cellar-sensor", "kitchen-plug"]),
            ("nothing-like-it", []),
        ):
            _, body = await served.get("/status/data", query_string={"q": q})
            assert [r["config_id"] for r in body["rows"]] == found, q
            assert body["page"]["matched"] == len(found)
        _, body = await served.get("/status/data", query_string={"q": "e", "state": "running"})
        assert [r["config_id"] for r in body["rows"]] == ["kitchen-plug"]


async def test_a_row_says_what_the_page_shows(
    core: FakeCore, tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    async with serve(core, env_for(tmp_path, core), FLEET) as served:
        await configure(
            served,
            {"id": "fine", "poll_interval_seconds": 1},
            {"id": "gone", "then": "down"},
            {"id": "crashy", "then": "crash"},
            {"id": "pushy", "device_type": "push"},
        )
        await trio.sleep(3.3)
        _, body = await served.get("/status/data")
        rows = {r["config_id"]: r for r in body["rows"]}
        fine, gone, crashy, pushy = (rows[k] for k in ("fine", "gone", "crashy", "pushy"))
        assert (fine["state"], fine["available"], fine["error"]) == ("running", True, None)
        assert fine["poll_s"] is not None and fine["late_s"] is not None
        assert 0 <= fine["late_s"] < 1
        assert fine["last_data"] is not None
        assert fine["actor"] == "Probe"
        assert (gone["state"], gone["available"]) == ("unavailable", False)
        assert gone["error"]["code"] == "device_unavailable"
        assert gone["error"]["hint"]
        assert crashy["state"] in ("backoff", "starting", "failed")
        assert crashy["restarts"] >= 1
        assert crashy["error"]["message"].endswith("boom")
        assert pushy["late_s"] is None  # a push actor has no schedule
        assert pushy["last_data"] is not None
        summary = body["summary"]
        assert summary["integration"]["id"] == "fleet"
        assert summary["runtime"]["core_link"]["state"] in ("unknown", "up", "no_identity")
        for figure in ("queue_depth", "spool_depth", "spool_oldest_age", "delivered", "dropped"):
            assert figure in summary["delivery"]
        assert summary["rehydration"]["sources"]


async def test_the_reason_is_shown(served: Served, autojump_clock: trio.abc.Clock) -> None:
    await configure(served, {"id": "gone", "then": "down"})
    await trio.sleep(2)
    _, body = await served.get("/status/data")
    assert body["rows"][0]["reason"] == "offline"
    _, detail = await served.get("/status/device/gone")
    assert detail["row"]["reason"] == "offline"


async def test_a_device_in_detail(
    core: FakeCore, tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    async with serve(core, env_for(tmp_path, core), FLEET) as served:
        polls = ["ok", "ok", "ok", "down", "down", "down", "down"]
        config = {"id": "flaky", "config_id": "cfg-flaky", "device_id": "flaky-dev"}
        await configure(served, {**config, "polls": polls})
        await trio.sleep(8)
        for _ in range(120):  # retries back off with jitter: wait for the recovery
            status, body = await served.get("/status/device/cfg-flaky")
            if body["row"]["state"] == "running":
                break
            await trio.sleep(1)
        await trio.sleep(2)  # and for the history's next look
        status, body = await served.get("/status/device/cfg-flaky")
        assert status == 200
        assert body["row"]["device_id"] == "flaky-dev"
        assert body["row"]["state"] == "running"
        (reading,) = body["readings"]
        assert reading == {"metric": "n", "value": body["latest_state"]["n"], "unit": None}
        assert body["figures"]["polls"] >= 8
        events = [e["event_type"] for e in body["events"]]
        assert events[:2] == ["device.available", "device.unavailable"]  # newest first
        history = [(h["state"], h["available"]) for h in body["history"]]
        assert history[0] == ("running", True)
        assert ("unavailable", False) in history
        assert history[-1] in (("starting", True), ("running", True))  # the first look
        gone = next(h for h in body["history"] if h["state"] == "unavailable")
        assert gone["error"] == "device_unavailable"
        assert body["children"] == []
        assert body["delivery"]["accepted"] >= 1
        _, by_local_id = await served.get("/status/device/flaky")
        assert by_local_id["row"]["config_id"] == "cfg-flaky"
        status, _ = await served.get("/status/device/flaky-dev")  # a device id is no config id
        assert status == 404


async def test_secrets_are_masked(
    core: FakeCore, tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    async with serve(core, env_for(tmp_path, core), VAULT) as served:
        await configure(
            served,
            {"id": "v1", "password": "open-sesame-123", "api_key": "key-abcdef-456", **EVERY_S},
            {"id": "v2", "password": "wrong-pass-789!", "api_key": "key-ghijkl-012", **EVERY_S},
        )
        await trio.sleep(3)
        everything = []
        for path in ("/status/data", "/status/device/v1", "/status/device/v2"):
            status, body = await served.get(path)
            assert status == 200, body
            everything.append(repr(body))
        text = "\n".join(everything)
        for secret in (
            "open-sesame-123",
            "wrong-pass-789",
            "key-abcdef-456",
            "key-ghijkl-012",
            "url-pass-9876",
        ):
            assert secret not in text, secret
        _, v2 = await served.get("/status/device/v2")
        assert "login refused for password" in v2["row"]["error"]["message"]
        assert v2["config"]["password"] == v2["config"]["api_key"] == "**********"
        assert v2["config"]["url"] == "http://***@nas.local/api"
        assert v2["latest_state"] == {"session_token": "**********", "mode": "eco"}
        _, v1 = await served.get("/status/device/v1")
        assert v1["readings"][0]["value"] == "logged in with **********"


async def test_the_openapi_document_describes_the_data_not_the_page(
    served: Served, autojump_clock: trio.abc.Clock
) -> None:
    _, document = await served.get("/openapi.json")
    paths: Mapping[str, Any] = document["paths"]
    assert "/status/data" in paths
    assert "/status/device/{config_id}" in paths
    assert "/status" not in paths
    assert not any(p.startswith("/status/static") for p in paths)
    parameters = {p["name"] for p in paths["/status/data"]["get"]["parameters"]}
    assert parameters == {"offset", "limit", "state", "q"}


async def test_the_history_follows_restarts_and_forgets_removed_devices(
    served: Served, autojump_clock: trio.abc.Clock
) -> None:
    await configure(served, {"id": "a"}, {"id": "b"})
    history = HealthHistory()
    await history.sample(served.runtime.actors)
    await trio.sleep(2)
    await history.sample(served.runtime.actors)
    before = history.of("a")
    assert before[0].state == "running"
    await configure(served, {"id": "a", "poll_interval_seconds": 5})  # a new supervisor
    status, _ = await served.post("/deconfigure", {"id": "b"})
    assert status == 200
    await trio.sleep(2)
    await history.sample(served.runtime.actors)
    after = history.of("a")
    assert after[0].state == "running"
    assert len(after) == len(before) + 1
    assert history.of("b") == []
