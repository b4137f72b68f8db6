"""The README works as printed: its first integration, its tests and its commands run, and
every other Python block in it at least parses and imports only names that exist."""

from __future__ import annotations

import ast
import importlib
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCK = re.compile(r"```(python|toml)\n(.*?)```", re.S)
BIN = Path(sys.executable).parent


def blocks() -> list[tuple[str, str]]:
    return BLOCK.findall(README)


def files() -> dict[str, str]:
    """The blocks that are files: the ones whose first line is ``# <name>``."""
    found = {}
    for _, body in blocks():
        first = body.splitlines()[0]
        if re.fullmatch(r"# [\w.]+\.(py|toml)", first):
            found[first[2:]] = body
    return found


def test_every_python_block_parses_and_imports_what_exists() -> None:
    for language, body in blocks():
        if language != "python":
            continue
        tree = ast.parse(textwrap.dedent(body))  # a method shown alone is indented
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("runtime"):
                module = importlib.import_module(node.module or "")
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{node.module}.{alias.name}"


@pytest.mark.slow
def test_the_first_integration_and_its_tests_run_as_printed(tmp_path: Path) -> None:
    written = files()
    assert {"plugs.py", "test_plug.py", "test_plugs_in_core.py", "pyproject.toml"} <= set(written)
    for name, body in written.items():
        (tmp_path / name).write_text(body)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    check = subprocess.run(
        [str(BIN / "piphi-runtime"), "check", "plugs:Plug"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    assert "turn_off" in check.stdout
    tests = subprocess.run(
        [str(BIN / "pytest"), "-q", "-p", "no:cacheprovider", "test_plug.py",
         "test_plugs_in_core.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "2 passed" in tests.stdout


@pytest.mark.slow
def test_serve_as_printed_answers(tmp_path: Path) -> None:
    (tmp_path / "plugs.py").write_text(files()["plugs.py"])
    with socket_port() as port:
        pass
    env = {
        **os.environ,
        "PORT": str(port),
        "PIPHI_STATE_DIR": str(tmp_path / "state"),
        "PIPHI_CONFIG_SNAPSHOT_PATH": str(tmp_path / "none.json"),
        "PIPHI_CORE_BASE_URL": "http://127.0.0.1:9",
    }
    process = subprocess.Popen(
        [str(BIN / "piphi-runtime"), "serve", "plugs:integration", "--host", "127.0.0.1"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/contract", timeout=2)
                break
            except httpx.TransportError:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert answer.json()["integration_id"] == "demo-plugs"
    finally:
        process.terminate()
        process.wait(timeout=30)
        if process.stderr:
            process.stderr.close()


class socket_port:
    """A free port on 127.0.0.1, released on exit (for a child to bind right after)."""

    def __enter__(self) -> int:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        return int(self._sock.getsockname()[1])

    def __exit__(self, *_: object) -> None:
        self._sock.close()
