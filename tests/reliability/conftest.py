"""Fixtures of the reliability suite: a Core on 127.0.0.1 in the test's nursery, and a
``piphi-runtime serve`` process delivering to it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.reliability._procs import LiveCore, LiveRuntime, live_runtime, runtime_env


@pytest.fixture
def fake_core_class() -> type[LiveCore]:
    """Core for a runtime process (``core``, through ``fake_core``): a FakeCore that also
    times what it stores."""
    return LiveCore


@pytest.fixture
async def rt(core: LiveCore, tmp_path: Path) -> AsyncIterator[LiveRuntime]:
    """The runtime as a process, its state in ``tmp_path / "state"``, its log beside it."""
    async with live_runtime(
        runtime_env(core, tmp_path / "state"), tmp_path / "runtime.log"
    ) as live:
        yield live
