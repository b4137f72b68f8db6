"""CPython's cyclic garbage collector, tuned for a runtime of many idle actors: what the
process owner (``serve``, and so the CLI) opts in to. Library code never touches it.

A runtime is mostly idle actors, and each keeps its suspended await chain (about eight
objects) in the young generation, so every young pass scans all of them: about 6 us per
actor. Almost everything the runtime allocates is freed by reference counting, so
collecting less often costs little memory (docs/benchmarks.md):

- ``tuned()``: collect the young generation every 50,000 allocations instead of every
  700. At the default a burst of allocation (a /diagnostics answer, a snapshot) triggers
  dozens of passes: /diagnostics p99 at 1,000 devices went from 120 ms to 58 ms.
- ``held()``: no collection while a snapshot is reconciled; the pass runs once, after.
  A 1%-changed re-sync of 10,000 configs takes about 50 ms instead of 150-480 ms. A
  collector that was already off stays off.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["held", "tuned"]


@contextmanager
def tuned() -> Iterator[None]:
    previous = gc.get_threshold()
    gc.set_threshold(max(previous[0], 50_000), previous[1], previous[2])
    try:
        yield
    finally:
        gc.set_threshold(*previous)


@contextmanager
def held() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
