"""The pytest plugin (``pytest11`` entry point): the fixtures ``runtime.testing`` documents.

Loaded in every pytest run of an environment where the runtime is installed, used or
not, so it imports nothing but pytest until a fixture runs (``tests/test_plugin.py``
measures it)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import trio

    from ._fakecore import FakeCore
    from ._integration import Integration
    from .devcore import DevCore
    from .testing import RunningIntegration

__all__ = ["devcore", "fake_core", "fake_core_class", "run_integration"]


@pytest.fixture
def fake_core_class() -> type[FakeCore]:
    """The class ``fake_core`` serves: override this fixture to serve a subclass."""
    from ._fakecore import FakeCore

    return FakeCore


@pytest.fixture
async def fake_core(nursery: trio.Nursery, fake_core_class: type[FakeCore]) -> FakeCore:
    """A ``FakeCore`` serving on 127.0.0.1 (a free port) until the test ends."""
    core = fake_core_class()
    await nursery.start(core.serve)
    return core


@pytest.fixture
async def devcore(nursery: trio.Nursery) -> AsyncIterator[DevCore]:
    from .devcore import DevCore

    with tempfile.TemporaryDirectory() as directory:
        core = DevCore(os.path.join(directory, "core.db"))
        await nursery.start(core.serve)
        yield core


@pytest.fixture
def run_integration(
    devcore: DevCore, nursery: trio.Nursery
) -> Callable[..., AbstractAsyncContextManager[RunningIntegration]]:
    import httpx
    import trio

    from ._serve import serve
    from .testing import RunningIntegration

    @asynccontextmanager
    async def run(integration: Integration, **env: str) -> AsyncIterator[RunningIntegration]:
        with tempfile.TemporaryDirectory() as state:
            environment = {
                "PIPHI_CORE_BASE_URL": devcore.data_url,
                "PIPHI_CONTAINER_ID": devcore.container_id,
                "PIPHI_INTEGRATION_INTERNAL_TOKEN": devcore.token or "",
                "PIPHI_STATE_DIR": state,
                "PIPHI_CONFIG_SNAPSHOT_PATH": os.path.join(state, "no-snapshot.json"),
                **env,
            }
            async with trio.open_nursery() as inner:
                urls = await inner.start(
                    partial(serve, integration, env=environment, host="127.0.0.1", port=0)
                )
                async with httpx.AsyncClient(
                    base_url=urls[0], headers=devcore.runtime_headers(), timeout=30
                ) as http:
                    yield RunningIntegration(urls[0], http, devcore)
                inner.cancel_scope.cancel()

    del nursery
    return run
