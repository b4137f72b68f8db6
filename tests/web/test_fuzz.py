"""Every route fuzzed from the generated ``/openapi.json`` (schemathesis), against a real
``piphi-runtime serve`` process in both auth modes: no 5xx, no answer outside its
declared schema, every error problem+json. Bounded: a few dozen examples per operation."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    negative_data_rejection,
    positive_data_acceptance,
)

pytestmark = pytest.mark.slow  # a real process: make test runs it, -m "not slow" skips it

ROOT = Path(__file__).resolve().parent.parent.parent
TOKEN = "fuzz-token"
HEADERS = {"X-Container-Id": "ctr-fuzz", "X-PiPhi-Integration-Token": TOKEN}
EXAMPLES = 15


def start(state: Path, *, managed: bool) -> tuple[subprocess.Popen[str], str]:
    env = {
        **os.environ,
        "PIPHI_CORE_BASE_URL": "http://127.0.0.1:9",  # nothing listens: delivery spools
        "PIPHI_STATE_DIR": str(state),
        "PIPHI_CONFIG_SNAPSHOT_PATH": str(state / "no-mount.json"),
        "PIPHI_CONTAINER_ID": "ctr-fuzz",
        "PIPHI_LOG_LEVEL": "ERROR",
    }
    if managed:
        env["PIPHI_INTEGRATION_INTERNAL_TOKEN"] = TOKEN
    command = [sys.executable, "-m", "runtime", "serve", "tests.served:INTEGRATION"]
    process = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()  # "serving <id> on <url>", or EOF if it failed
    process.stdout.close()
    if not line.startswith("serving"):
        process.kill()
        process.wait()
        pytest.fail(f"serve did not start: {line!r}")
    return process, line.split()[-1]


def after_the_fuzzer(url: str) -> None:
    """Nothing froze or wedged the runtime: it answers, Core's next real snapshot applies
    whatever generation the fuzzer left behind, and its device polls."""
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    snapshot = {
        "generation": 1,
        "driver_pid": "core-after-the-fuzzer",
        "updated_at": datetime.now(UTC).isoformat(),
        "configs": [{"id": "after-fuzz", "poll_interval_seconds": 0.2}],
    }
    answer = httpx.post(f"{url}/config/sync", json=snapshot, headers=HEADERS, timeout=30).json()
    assert (answer["status"], answer["active_config_ids"]) == ("synced", ["after-fuzz"]), answer
    deadline = time.monotonic() + 10
    while True:
        diagnostics = httpx.get(f"{url}/diagnostics", headers=HEADERS, timeout=10).json()
        (record,) = diagnostics["diagnostics"]["actors"]
        if record["polls"] >= 2:
            break
        assert time.monotonic() < deadline, record
        time.sleep(0.2)


@pytest.fixture(scope="module")
def runtime_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    process, url = start(tmp_path_factory.mktemp("state"), managed=request.param == "managed")
    try:
        httpx.post(f"{url}/config", json={"id": "fuzz-1"}, headers=HEADERS, timeout=10)
        yield url
        after_the_fuzzer(url)
    finally:
        process.terminate()
        process.wait(timeout=30)


def fuzz(url: str, mode: GenerationMode) -> list[str]:
    """Fuzz every operation of the runtime's own /openapi.json; the failures, one per
    operation that had any (hypothesis shrinks each to its smallest example)."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],  # no shrinking: bounded in time
        )
        def call(case: schemathesis.Case) -> None:
            # A well-formed request may still be refused (an unknown device is a 404), and
            # the contract is lenient by design (numbers taken as ids, unknown keys kept):
            # the other checks apply, among them no 5xx and answers within their schema.
            response = case.call_and_validate(
                headers=HEADERS,
                excluded_checks=[positive_data_acceptance, negative_data_rejection],
                timeout=10,
            )
            if response.status_code >= 400:
                (content_type,) = response.headers.get("content-type", [""])
                assert content_type.startswith("application/problem+json"), content_type

        try:
            call()
        except Unsatisfiable:
            continue  # nothing of this operation can be made invalid (GET /health)
        except Exception as exc:
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    return failures


@pytest.mark.parametrize(
    ("runtime_url", "mode"),
    [
        ("managed", GenerationMode.POSITIVE),
        ("managed", GenerationMode.NEGATIVE),
        # Invalid bodies meet the same code in both auth modes: fuzzed once.
        ("adopted", GenerationMode.POSITIVE),
    ],
    indirect=["runtime_url"],
)
def test_every_route_keeps_its_contract(runtime_url: str, mode: GenerationMode) -> None:
    failures = fuzz(runtime_url, mode)
    assert not failures, "\n\n".join(failures)
