"""How blocking work (SQLite, files) leaves the trio thread: one worker-thread call.

Every call site goes through the module attribute ``offload``, looked up at call time,
so tests on trio's virtual clock can swap in an inline runner: under the autojump clock
a call in a worker thread leaves trio idle, and the clock would leap to the next
deadline while the thread works.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import trio

__all__ = ["offload"]

T = TypeVar("T")


async def _in_worker_thread(
    fn: Callable[..., T], *args: Any, limiter: trio.CapacityLimiter | None = None
) -> T:
    return await trio.to_thread.run_sync(fn, *args, limiter=limiter)


offload = _in_worker_thread
