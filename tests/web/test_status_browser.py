"""The status page in a real headless browser: Debian's chromium driven by playwright.

A runtime is served in process by ``piphi-runtime serve``'s code (hypercorn on 127.0.0.1, a
free port) against a fake Core; playwright's synchronous API runs in a worker thread and
reaches back into trio (``trio.from_thread``) to take a device offline. Real time, with
every wait bounded. ``make test`` installs chromium when it is missing (``make chromium``).

``PIPHI_STATUS_SCREENSHOT=docs/status.png pytest tests/web/test_status_browser.py`` also
writes the README's screenshot.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import trio

from runtime import DeviceActor, DeviceUnavailable, Integration, Reading, RuntimeConfig
from runtime._serve import serve
from runtime.testing import FakeCore
from tests.served import CORE_HEADERS, CORE_TOKEN, env_for

pytestmark = pytest.mark.slow  # a real process: make test runs it, -m "not slow" skips it

T = TypeVar("T")

CHROMIUM = "/usr/bin/chromium"
MISSING = (
    "The browser test needs Debian's chromium and the playwright package. Run `make test` "
    "(it installs chromium when missing, and playwright with the dev extras), or "
    "`apt-get install -y chromium` and `pip install -e '.[dev]'`."
)
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: The issue's bound: a device going offline shows on the page within this.
OUTAGE_SHOWN_WITHIN = 3.0
#: Bound on every single browser wait, in milliseconds.
WAIT_MS = 15_000

#: Devices the test has taken offline (the actors read it on every poll).
OFFLINE: set[str] = set()


class SwitchConfig(RuntimeConfig):
    room: str = "hall"
    crash: bool = False


class Switch(DeviceActor[SwitchConfig]):
    """A smart switch: offline while its id is in ``OFFLINE``; ``crash`` makes it fail."""

    async def poll(self) -> list[Reading]:
        if self.config.crash:
            raise RuntimeError("relay firmware answered E42")
        if self.config.id in OFFLINE:
            raise DeviceUnavailable(f"{self.config.room} switch did not answer")
        self.publish_state({"room": self.config.room})
        return [Reading("power_w", 11.5, "W"), Reading("is_on", True)]


HOME = Integration(id="switches", name="Smart switches", version="1.4.0", actor=Switch)
ROOMS = ["bedroom", "garage", "hall", "kitchen", "living-room", "office", "porch"]


def configs() -> list[dict[str, Any]]:
    every = {"poll_interval_seconds": 0.25}
    made = [{"id": f"{room}-switch", "room": room, **every} for room in ROOMS]
    made.append({"id": "cellar-switch", "room": "cellar", "crash": True, **every})
    return made


@pytest.fixture(autouse=True)
def nothing_offline() -> Iterator[None]:
    OFFLINE.clear()
    yield
    OFFLINE.clear()


@asynccontextmanager
async def running(core: FakeCore, tmp_path: Path, **env: str) -> AsyncIterator[str]:
    """The integration served on 127.0.0.1 with its devices configured; its base URL."""
    environment = env_for(tmp_path, core, PIPHI_CONTAINER_ID="ctr-1", **env)
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(partial(serve, HOME, env=environment, host="127.0.0.1", port=0))
        async with httpx.AsyncClient(base_url=urls[0], headers=CORE_HEADERS) as http:
            answer = await http.post("/config/sync", json={"generation": 1, "configs": configs()})
            assert answer.status_code == 200, answer.text
        yield urls[0]
        nursery.cancel_scope.cancel()


@contextmanager
def browser() -> Iterator[Any]:
    """A fresh headless chromium (its own profile directory), closed afterwards."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(MISSING, pytrace=False)
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(MISSING, pytrace=False)
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=ARGS,
            viewport={"width": 1280, "height": 860},
        )
        context.set_default_timeout(WAIT_MS)
        try:
            yield context
        finally:
            context.close()


async def in_browser(script: Callable[[Any], T]) -> T:
    """Run ``script(context)`` in a worker thread (playwright's API blocks)."""

    def run() -> T:
        with browser() as context:
            return script(context)

    return await trio.to_thread.run_sync(run)


class Console:
    """Every console error and uncaught exception of a page."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))


def row(config_id: str, state: str | None = None) -> str:
    selector = f'#rows tr[data-config-id="{config_id}"]'
    return f'{selector}[data-state="{state}"]' if state else selector


def rows_are(page: Any, count: int) -> None:
    """Wait until the table shows ``count`` rows. (The page's policy forbids eval, so
    playwright's string predicates cannot run in it; its locators can.)"""
    from playwright.sync_api import expect

    expect(page.locator("#rows tr")).to_have_count(count, timeout=WAIT_MS)


def take_offline(config_id: str) -> None:
    OFFLINE.add(config_id)


async def test_the_page_shows_the_devices_and_an_outage_within_3_s(
    core: FakeCore, tmp_path: Path
) -> None:
    def script(context: Any) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        page = context.new_page()
        console = Console(page)
        page.goto(f"{url}/status")
        rows_are(page, len(ROOMS) + 1)
        seen["title"] = page.text_content("#title")
        seen["kitchen"] = page.text_content(row("kitchen-switch"))
        page.wait_for_selector(f"{row('cellar-switch')} td.err .hint")
        seen["cellar"] = page.text_content(row("cellar-switch"))
        seen["link"] = page.text_content("#card-core")
        seen["delivery"] = page.text_content("#delivery")
        page.wait_for_selector(row("garage-switch", "running"))
        began = time.monotonic()
        trio.from_thread.run_sync(take_offline, "garage-switch")
        page.wait_for_selector(row("garage-switch", "unavailable"), timeout=WAIT_MS)
        seen["outage_shown_after"] = time.monotonic() - began
        seen["garage"] = page.text_content(row("garage-switch"))
        page.screenshot(path=str(tmp_path / "status.png"), full_page=True)

        page.click(row("garage-switch"))
        page.wait_for_selector("#detail-body section >> text=Recent events")
        page.wait_for_selector("#detail-body >> text=device.unavailable")
        seen["detail"] = page.text_content("#detail")
        page.click("#detail-close")
        page.wait_for_selector("#detail", state="hidden")

        page.fill("#search", "KITCH")
        rows_are(page, 1)
        seen["searched"] = page.get_attribute("#rows tr", "data-config-id")
        page.fill("#search", "")
        rows_are(page, len(ROOMS) + 1)
        page.click('#filters button[data-state="unavailable"]')
        rows_are(page, 1)
        seen["filtered"] = page.get_attribute("#rows tr", "data-config-id")

        phone = context.new_page()
        phone_console = Console(phone)
        phone.set_viewport_size({"width": 390, "height": 844})
        phone.goto(f"{url}/status")
        phone.wait_for_selector(row("kitchen-switch"))
        seen["phone_overflow"] = phone.evaluate(
            "document.documentElement.scrollWidth - window.innerWidth"
        )
        seen["phone_header_shown"] = phone.is_visible("#devices thead")
        seen["errors"] = console.errors + phone_console.errors
        return seen

    async with running(core, tmp_path) as url:
        seen = await in_browser(script)
    assert seen["title"] == "Smart switches"
    assert "kitchen-switch" in seen["kitchen"] and "running" in seen["kitchen"]
    assert "relay firmware answered E42" in seen["cellar"]
    assert "actor_exception" in seen["cellar"] and "backoff" in seen["cellar"]
    assert "Delivered" in seen["delivery"] and "Spool" in seen["delivery"]
    print(f"the outage showed after {seen['outage_shown_after']:.2f} s")
    assert seen["outage_shown_after"] < OUTAGE_SHOWN_WITHIN, seen["outage_shown_after"]
    assert "did not answer" in seen["garage"]
    assert "device.unavailable" in seen["detail"] and "Health history" in seen["detail"]
    assert seen["searched"] == "kitchen-switch"
    assert seen["filtered"] == "garage-switch"
    assert seen["phone_overflow"] <= 0
    assert seen["phone_header_shown"] is False  # rows become cards
    assert seen["errors"] == []
    wanted = os.environ.get("PIPHI_STATUS_SCREENSHOT")
    if wanted:
        shutil.copyfile(tmp_path / "status.png", wanted)


async def test_the_page_asks_for_the_token_once_in_managed_mode(
    core: FakeCore, tmp_path: Path
) -> None:
    def script(context: Any) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        page = context.new_page()
        console = Console(page)
        requested: list[str] = []
        page.on("request", lambda r: requested.append(r.url))
        page.goto(f"{url}/status")
        page.wait_for_selector("#auth-form", state="visible")
        seen["main_hidden"] = page.is_hidden("#main")
        seen["data_before_token"] = [u for u in requested if "/status/data" in u]
        seen["errors_before_token"] = list(console.errors)

        page.fill("#auth-token", "not-the-token")
        page.press("#auth-token", "Enter")
        page.wait_for_selector("#auth-error", state="visible")
        seen["refused"] = page.text_content("#auth-error")

        page.fill("#auth-token", CORE_TOKEN)
        page.click("#auth-form button[type=submit]")
        page.wait_for_selector(row("kitchen-switch"))
        seen["stored"] = page.evaluate("sessionStorage.getItem('piphi.status.token')")
        page.reload()
        page.wait_for_selector(row("kitchen-switch"))
        seen["asked_again"] = page.is_visible("#auth-form")
        seen["urls"] = list(requested)
        seen["page_url"] = page.url
        seen["errors"] = list(console.errors)
        return seen

    async with running(core, tmp_path, PIPHI_INTEGRATION_INTERNAL_TOKEN=CORE_TOKEN) as url:
        seen = await in_browser(script)
    assert seen["main_hidden"] is True
    assert seen["data_before_token"] == []  # asked first, not after a refusal
    assert seen["errors_before_token"] == []
    assert seen["refused"] == "The runtime refused this token."
    assert seen["stored"] == CORE_TOKEN
    assert seen["asked_again"] is False
    assert not any(CORE_TOKEN in u or "not-the-token" in u for u in seen["urls"])
    assert CORE_TOKEN not in seen["page_url"]
    # The refused token's 401 is the one error the browser logs.
    assert all("401" in e for e in seen["errors"]), seen["errors"]
    assert len(seen["errors"]) == 1
