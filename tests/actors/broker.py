"""A throwaway mosquitto for tests: a free port on 127.0.0.1, a temp config, bounded waits.

``running_broker(directory)`` starts one and always stops it, even when the test fails or
is cancelled. It can be killed and restarted on the same port mid-test. On Linux the
broker also gets SIGTERM if the test process dies, so a crashed run leaves nothing behind.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

__all__ = ["MISSING_MOSQUITTO", "Broker", "mosquitto_binary", "running_broker"]

MISSING_MOSQUITTO = (
    "mosquitto is not installed, and the MQTT actor tests need a real broker. "
    "Run `make test` (it installs Debian's mosquitto package when missing), "
    "or `apt-get install -y mosquitto`."
)

#: Debian installs the broker in /usr/sbin, which is not on every user's PATH.
CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")

START_TIMEOUT = 5.0
STOP_TIMEOUT = 5.0


def mosquitto_binary() -> str:
    """The broker's path; fails the test, naming the Makefile target, when it is missing."""
    found = shutil.which("mosquitto")
    if found is None:
        found = next((path for path in CANDIDATES if os.access(path, os.X_OK)), None)
    if found is None:
        pytest.fail(MISSING_MOSQUITTO, pytrace=False)
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _die_with_parent() -> Callable[[], None] | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1

    def arm() -> None:  # runs in the child, between fork and exec
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)

    return arm


class Broker:
    """One mosquitto on 127.0.0.1; ``start()``, ``stop(kill=...)``, start again."""

    def __init__(self, directory: Path, *, allow_anonymous: bool = True) -> None:
        self.binary = mosquitto_binary()
        self.host = "127.0.0.1"
        self.port = free_port()
        self.config_path = directory / "mosquitto.conf"
        self.log_path = directory / "mosquitto.log"
        lines = [
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'true' if allow_anonymous else 'false'}",
            "persistence false",
        ]
        if os.geteuid() == 0:
            # As root, mosquitto switches to its own user, which clears the parent-death
            # signal and may not read this directory; stay as we are instead.
            lines.append("user root")
        self.config_path.write_text("\n".join([*lines, ""]))
        self._process: trio.Process | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def start(self) -> None:
        """Start the broker and wait (bounded) until it accepts connections."""
        assert not self.running, "the broker is already running"
        with self.log_path.open("ab") as log:
            self._process = await trio.lowlevel.open_process(
                [self.binary, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent(),
            )
        process = self._process
        with trio.move_on_after(START_TIMEOUT):
            while process.returncode is None:
                try:
                    stream = await trio.open_tcp_stream(self.host, self.port)
                except OSError:
                    await trio.sleep(0.01)
                    continue
                await stream.aclose()
                return
        await self.stop(kill=True)
        pytest.fail(
            f"mosquitto did not come up on {self.host}:{self.port} within {START_TIMEOUT:g} s "
            f"(exit code {process.returncode}); its log:\n{self.log_tail()}",
            pytrace=False,
        )

    async def stop(self, *, kill: bool = False) -> None:
        """Stop the broker (SIGTERM, or SIGKILL with ``kill``) and reap it, bounded."""
        process = self._process
        if process is None:
            return
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                if kill:
                    process.kill()
                else:
                    process.terminate()
            with trio.move_on_after(STOP_TIMEOUT):
                await process.wait()
                self._process = None
                return
            process.kill()  # it ignored SIGTERM; SIGKILL cannot be ignored
            with trio.move_on_after(STOP_TIMEOUT):
                await process.wait()
            self._process = None


@asynccontextmanager
async def running_broker(directory: Path, *, allow_anonymous: bool = True) -> AsyncIterator[Broker]:
    """A started broker, stopped on the way out whatever happened. Without
    ``allow_anonymous`` and with no password file, it refuses every login."""
    broker = Broker(directory, allow_anonymous=allow_anonymous)
    try:
        await broker.start()
        yield broker
    finally:
        await broker.stop()
