from __future__ import annotations

import pickle
from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from runtime._core import parse_retry_after
from runtime.delivery import (
    CoreAuthRejected,
    CoreClient,
    CoreError,
    CoreIdentityUnknown,
    CoreRejected,
    CoreRouteNotFound,
    CoreServerError,
    CoreTimeout,
    CoreUnavailable,
    CoreUnexpectedResponse,
)
from runtime.testing import FakeCore

SECRET = "s3cr3t-token-value"


@pytest.fixture
async def client(core: FakeCore) -> AsyncIterator[CoreClient]:
    async with CoreClient(core.url, container_id="c-1", token=SECRET, timeout=2.0) as c:
        yield c


def test_base_url_is_normalised_and_checked() -> None:
    assert CoreClient("http://core:31419/api/v2/").base_url == "http://core:31419"
    assert CoreClient("http://core:31419/").base_url == "http://core:31419"
    with pytest.raises(ValueError, match="PIPHI_CORE_BASE_URL"):
        CoreClient("core:31419")


def test_from_env_reads_the_contract_variables() -> None:
    client = CoreClient.from_env(
        {
            "PIPHI_CORE_BASE_URL": "http://10.0.0.2:31419/api/v2",
            "PIPHI_CONTAINER_ID": "c-9",
            "PIPHI_INTEGRATION_INTERNAL_TOKEN": SECRET,
        }
    )
    assert client.base_url == "http://10.0.0.2:31419"
    assert client.container_id == "c-9"
    assert client.token_matches(SECRET)
    assert not client.token_matches(SECRET[:-1])
    assert not client.token_matches(None)
    default = CoreClient.from_env({})
    assert default.base_url == "http://127.0.0.1:31419"
    assert default.container_id is None
    assert not default.has_token


def test_repr_never_shows_the_token() -> None:
    text = repr(CoreClient(container_id="c", token=SECRET))
    assert "token=set" in text
    assert SECRET not in text
    assert SECRET[:4] not in text


async def test_posts_carry_the_auth_headers(core: FakeCore, client: CoreClient) -> None:
    await client.post_telemetry(b'{"device_id": "d"}')
    await client.post_event(b'{"event_id": "e"}')
    assert [(r.path, r.container_id, r.token) for r in core.received] == [
        ("/api/v2/integrations/telemetry", "c-1", SECRET),
        ("/api/v2/events/ingest", "c-1", SECRET),
    ]


async def test_the_token_header_is_omitted_when_no_token_is_known(core: FakeCore) -> None:
    async with CoreClient(core.url, container_id="c-1") as client:
        await client.post_telemetry(b"{}")
    assert core.received[0].token is None
    assert core.received[0].container_id == "c-1"


async def test_nothing_is_sent_without_a_container_id(core: FakeCore) -> None:
    async with CoreClient(core.url) as client:
        with pytest.raises(CoreIdentityUnknown) as info:
            await client.post_telemetry(b"{}")
        with pytest.raises(CoreIdentityUnknown):
            await client.fetch_configs()
    assert core.requests == 0
    assert "PIPHI_CONTAINER_ID" in info.value.hint


@pytest.mark.parametrize(
    ("status", "error", "retryable"),
    [
        (401, CoreAuthRejected, False),
        (403, CoreAuthRejected, False),
        (404, CoreRouteNotFound, False),
        (400, CoreRejected, False),
        (422, CoreRejected, False),
        (429, CoreServerError, True),
        (500, CoreServerError, True),
        (503, CoreServerError, True),
        (302, CoreUnexpectedResponse, False),
    ],
)
async def test_every_status_is_classified(
    core: FakeCore, client: CoreClient, status: int, error: type[CoreError], retryable: bool
) -> None:
    core.status = status
    with pytest.raises(error) as info:
        await client.post_telemetry(b"{}")
    err = info.value
    assert err.retryable is retryable
    assert err.status == status
    assert err.to_dict()["retryable"] is retryable
    assert err.code.startswith("core_")
    assert err.hint


async def test_retry_after_is_read_from_core(core: FakeCore, client: CoreClient) -> None:
    core.status = 503
    core.headers = [("Retry-After", "7")]
    with pytest.raises(CoreServerError) as info:
        await client.post_telemetry(b"{}")
    assert info.value.retry_after == 7.0


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Sun, 22 Nov 2026 10:00:30 GMT", now=1795341600.0) == 30.0


async def test_a_refused_connection_is_core_unavailable(core: FakeCore, client: CoreClient) -> None:
    await core.down()
    with pytest.raises(CoreUnavailable) as info:
        await client.post_telemetry(b"{}")
    assert info.value.retryable
    assert info.value.__cause__ is None and info.value.__suppress_context__


async def test_a_slow_core_is_a_timeout(
    core: FakeCore, client: CoreClient, autojump_clock: trio.abc.Clock
) -> None:
    core.delay = 10
    with pytest.raises(CoreTimeout) as info:
        await client.post_telemetry(b"{}")
    assert info.value.retryable


async def test_a_rejection_never_echoes_the_token() -> None:
    # A Core that echoes the request's headers in its error body.
    transport = httpx.MockTransport(
        lambda request: httpx.Response(
            400, text=f"bad payload from token {request.headers['x-piphi-integration-token']}"
        )
    )
    async with CoreClient(container_id="c-1", token=SECRET, transport=transport) as client:
        with pytest.raises(CoreRejected) as info:
            await client.post_telemetry(b"{}")
    err = info.value
    for text in (str(err), repr(err), str(err.to_dict()), repr(pickle.loads(pickle.dumps(err)))):
        assert SECRET not in text
    assert "[redacted]" in str(err)


async def test_fetch_configs_returns_core_rows(core: FakeCore, client: CoreClient) -> None:
    core.configs = [{"id": "a", "config_data": {"id": "a"}}]
    assert await client.fetch_configs() == core.configs


async def test_fetch_configs_refuses_a_non_list() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"rows": []}))
    async with CoreClient(container_id="c-1", transport=transport) as client:
        with pytest.raises(CoreUnexpectedResponse):
            await client.fetch_configs()


async def test_set_auth_wakes_waiters_only_on_change(client: CoreClient) -> None:
    version = client.auth_version
    assert not client.set_auth(container_id="c-1", token=SECRET)
    assert client.auth_version == version
    woke = trio.Event()

    async def waiter() -> None:
        await client.auth_changed()
        woke.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert client.set_auth(token="new-token")
    assert woke.is_set()
    assert client.token_matches("new-token")
    assert client.container_id == "c-1"


def test_core_errors_pickle_with_their_fields() -> None:
    err = CoreServerError("POST /x answered 503", status=503, retry_after=2.0)
    copy = pickle.loads(pickle.dumps(err))
    assert (type(copy), copy.status, copy.retry_after, copy.hint) == (
        CoreServerError,
        503,
        2.0,
        err.hint,
    )


def test_credentials_from_a_crlf_env_file_are_stripped_and_bad_ones_ignored() -> None:
    client = CoreClient.from_env(
        {"PIPHI_CONTAINER_ID": " c-1\r\n", "PIPHI_INTEGRATION_INTERNAL_TOKEN": f"{SECRET}\r"}
    )
    assert client.container_id == "c-1"
    assert client.token_matches(SECRET)
    assert not client.set_auth(token="bad\ntoken")
    assert client.token_matches(SECRET)


async def test_a_base_url_path_prefix_is_kept(core: FakeCore) -> None:
    async with CoreClient(f"{core.url}/core/api/v2", container_id="c-1") as client:
        await client.post_telemetry(b"{}")
    assert core.received[0].path == "/core/api/v2/integrations/telemetry"
