"""A full disk under a running ``piphi-runtime serve`` (issue 15, item 1), for real.

The state directory is on a 4 MiB tmpfs mounted for the test when the sandbox allows it
(root with CAP_SYS_ADMIN); a ballast file fills it, and deleting the ballast gives the
space back. Elsewhere the same happens through a file-size limit on the runtime process
(``RLIMIT_FSIZE``, set and lifted with ``prlimit``; Python ignores SIGXFSZ, so writes past
it fail with EFBIG as on a full disk, which SQLite reports as an I/O error);
``PIPHI_TEST_NO_MOUNT=1`` takes that path as root too.

Then, as in the issue: Core refuses for a while with the disk full, comes back, and must
get readings straight from memory although nothing can be spooled; ``/health`` says
``degraded`` with the cause (``spool_disk_full`` or ``spool_io_error``); the log names it
and never says "cannot rollback"; once space is back everything resumes by itself and
every reading accepted reaches Core.
"""

from __future__ import annotations

import errno
import os
import resource
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.helpers import wait_until
from tests.reliability._procs import (
    CONTAINER,
    LiveCore,
    LiveRuntime,
    device,
    drain_and_account,
    live_runtime,
    report,
    runtime_env,
    start_devices,
)

pytestmark = pytest.mark.slow  # a real process: make test runs it, -m "not slow" skips it

DEVICES = 20
INTERVAL = 0.1
SIZE = 4 * 1024 * 1024


class SmallDisk:
    """Where the state goes, and how to fill and free it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.mounted = False
        self.pid: int | None = None

    @property
    def state(self) -> Path:
        return self.root / "state"

    def mount(self) -> bool:
        self.root.mkdir()
        if os.geteuid() != 0 or os.environ.get("PIPHI_TEST_NO_MOUNT"):
            return False
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0700", "tmpfs", str(self.root)],
            capture_output=True,
            check=False,
        )
        self.mounted = done.returncode == 0
        return self.mounted

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.root)], check=False)

    def fill(self) -> None:
        if not self.mounted:
            assert self.pid is not None
            used = max(p.stat().st_size for p in self.state.glob("spool.db*"))
            _, hard = resource.prlimit(self.pid, resource.RLIMIT_FSIZE)
            resource.prlimit(self.pid, resource.RLIMIT_FSIZE, (used, hard))  # soft only
            return
        # Unbuffered: a buffered file kept the tail of the write that failed and raised
        # ENOSPC again when it closed.
        with (self.root / "ballast").open("wb", buffering=0) as ballast:
            chunk = bytes(64 * 1024)
            try:
                while True:
                    ballast.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise

    def free(self) -> None:
        if not self.mounted:
            assert self.pid is not None
            _, hard = resource.prlimit(self.pid, resource.RLIMIT_FSIZE)
            resource.prlimit(self.pid, resource.RLIMIT_FSIZE, (hard, hard))
            return
        (self.root / "ballast").unlink()


@asynccontextmanager
async def small_disk(tmp_path: Path) -> AsyncIterator[SmallDisk]:
    disk = SmallDisk(tmp_path / "disk")
    try:
        disk.mount()
        yield disk
    finally:
        disk.unmount()


def _spool_concerns(health: dict[str, object]) -> list[str]:
    runtime = health["runtime"]
    assert isinstance(runtime, dict)
    return [c["code"] for c in runtime["concerns"] if c["code"].startswith("spool_")]


async def _health(rt: LiveRuntime) -> dict[str, object]:
    reply = await rt.http.get("/health")
    assert reply.status_code == 200
    body: dict[str, object] = reply.json()
    return body


@pytest.mark.slow
async def test_a_full_disk_keeps_delivery_going_and_resumes_when_space_is_back(
    core: LiveCore, tmp_path: Path
) -> None:
    configs = [device(n, interval=INTERVAL) for n in range(DEVICES)]
    async with small_disk(tmp_path) as disk:
        env = {**runtime_env(core, disk.state), "PIPHI_CONTAINER_ID": CONTAINER}
        log = tmp_path / "runtime.log"  # beside the small disk, not on it
        async with live_runtime(env, log) as rt:
            disk.pid = rt.proc.pid
            await start_devices(rt, core, configs)
            # Core refuses for a while: readings spill to the spool, which fills the disk.
            await core.down()
            await rt.wait_for(
                lambda d: d["delivery"]["spool_depth"] > 200, timeout=15, what="spooling"
            )
            disk.fill()
            full = await rt.wait_for(
                lambda d: d["delivery"]["spool_error"] is not None,
                timeout=15,
                what="the spool failing on the full disk",
            )
            code = full["delivery"]["spool_error"]["code"]
            assert code in ("spool_disk_full", "spool_io_error"), full["delivery"]
            health = await _health(rt)
            assert health["status"] == "degraded"
            assert code in _spool_concerns(health)
            # Core is back, the disk still full: readings flow straight from memory.
            await core.up()
            stored = len(core.stored)
            await wait_until(lambda: len(core.stored) > stored + 20 * DEVICES, timeout=15)
            still = (await rt.diagnostics())["delivery"]
            assert still["spool_error"] is not None, "the disk is still full"
            assert still["queue_depth"] <= 2 * 10_000, "the memory limit holds"
            # Space is back: the spool resumes by itself and health is ok again.
            disk.free()
            await rt.wait_for(
                lambda d: d["delivery"]["spool_error"] is None,
                timeout=20,
                what="the spool writing again",
            )
            assert _spool_concerns(await _health(rt)) == []
            final, dups = await drain_and_account(rt, core, configs)
    text = log.read_text()
    assert "cannot rollback" not in text
    assert code in text
    assert "takes writes again" in text
    report(
        "full disk",
        mechanism="tmpfs" if disk.mounted else "RLIMIT_FSIZE",
        cause=code,
        accepted=final["delivery"]["accepted"],
        dropped=final["delivery"]["dropped"],
        duplicates=sum(n - 1 for n in dups.values()),
    )
