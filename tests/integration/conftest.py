"""Integration fixtures: one real `baton dev` (moto server + model simulator + local API) per session."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from baton.models import SETTLED_STATUSES
from baton_dev.runtime.local import free_port

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 360  # a 2-core machine at load 30 has taken 140 s (plus slow imports)
SWEEP_EVERY_S = 2
MAX_ATTEMPTS = 3
MAX_RECEIVE_COUNT = 4
WEBHOOK_SCHEDULE = "1s,2s,3s"
# The origin a browser client of the shared stack runs on (CORS on, as a web app would set it).
CORS_ORIGIN = "http://app.localhost:5173"
WEBHOOK_OVERRIDES = f"WebhookRetrySchedule={WEBHOOK_SCHEDULE} CorsAllowOrigin={CORS_ORIGIN}"
# A job left in needs_review fails as review_expired this long after it stopped (default: retention).
REVIEW_EXPIRY_S = 20


@dataclass
class Tenant:
    name: str
    api_key: str
    webhook_secret: str


@dataclass
class LocalStack:
    api_url: str
    state: dict[str, Any]
    log_path: Path

    def client(self, tenant: Tenant | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {tenant.api_key}"} if tenant else {}
        return httpx.Client(base_url=self.api_url, headers=headers, timeout=40)

    def aws(self, service: str) -> Any:
        """A client with the local stack's own identity (its moto server enforces IAM)."""
        return boto3.client(  # type: ignore[call-overload]
            service,
            endpoint_url=self.state["endpoint_url"],
            region_name=self.state["region"],
            **self.state["credentials"],
        )

    @property
    def simulator_url(self) -> str:
        return str(self.state["model_url"]).removesuffix("/v1")

    def model_calls(self, job_id: str) -> list[dict[str, Any]]:
        """The local model's own request log for one job (every call, including refused ones)."""
        log = httpx.get(f"{self.simulator_url}/_sim/requests", timeout=10).json()
        entries = log["requests"] if isinstance(log, dict) else log
        return [entry for entry in entries if entry.get("job_id") == job_id]

    def stats(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.api_url}/_local/stats", timeout=10).json())

    def create_tenant(self, name: str) -> Tenant:
        answer = subprocess.run(
            [
                str(Path(sys.executable).parent / "baton"),
                "keys",
                "create",
                "--tenant",
                name,
                "--state-dir",
                str(self.log_path.parent),
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        issued = json.loads(answer.stdout)
        return Tenant(
            name=issued["tenant"], api_key=issued["api_key"], webhook_secret=issued["webhook_secret"]
        )


@contextmanager
def running_stack(state_dir: Path, overrides: str = "") -> Iterator[LocalStack]:
    """A real `baton dev` in `state_dir` with extra template parameter overrides, stopped after."""
    port = free_port()
    log_path = state_dir / "dev.log"
    env = {
        key: value for key, value in os.environ.items() if key not in {"AWS_ENDPOINT_URL", "OPENAI_BASE_URL"}
    }
    env["BATON_SIM_LATENCY_MS"] = "20"
    # Fast retries so the reliability tests finish in seconds (defaults: 2 s base, 300 s cap).
    env["BATON_RETRY_BASE_SECONDS"] = "0.5"
    env["BATON_RETRY_CAP_SECONDS"] = "2"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "baton"),
                "dev",
                "--port",
                str(port),
                "--state-dir",
                str(state_dir),
                "--schedule-every",
                str(SWEEP_EVERY_S),
                "--parameter-overrides",
                f"MaxAttempts={MAX_ATTEMPTS} MaxReceiveCount={MAX_RECEIVE_COUNT}"
                f" ReviewExpirySeconds={REVIEW_EXPIRY_S} {overrides}".strip(),
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    state_file = state_dir / "dev.json"
    deadline = time.monotonic() + START_TIMEOUT_S
    while not state_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"baton dev did not start:\n{log_path.read_text()[-4000:]}")
        time.sleep(0.2)
    stack = LocalStack(
        api_url=f"http://127.0.0.1:{port}", state=json.loads(state_file.read_text()), log_path=log_path
    )
    try:
        yield stack
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            pytest.fail("baton dev did not stop on SIGTERM within 20 s")


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    # A short webhook schedule, so delivery retries and exhaustion show within seconds.
    with running_stack(tmp_path_factory.mktemp("baton-dev"), WEBHOOK_OVERRIDES) as stack:
        yield stack


@pytest.fixture(scope="session")
def tenant(local_stack: LocalStack) -> Tenant:
    return local_stack.create_tenant("acme")


@pytest.fixture(scope="session")
def other_tenant(local_stack: LocalStack) -> Tenant:
    return local_stack.create_tenant("globex")


@pytest.fixture
def api(local_stack: LocalStack, tenant: Tenant) -> Iterator[httpx.Client]:
    with local_stack.client(tenant) as client:
        yield client


# Settled: terminal, or stopped for review (no stage works on it until someone decides).
TERMINAL = {status.value for status in SETTLED_STATUSES}


def wait_for_terminal(client: httpx.Client, job_id: str, timeout_s: float = 60) -> dict[str, Any]:
    """Long-poll (GET ?wait=) until the job is terminal; fail with the last state at the deadline."""
    deadline = time.monotonic() + timeout_s
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        answer = client.get(f"/v1/jobs/{job_id}", params={"wait": 5})
        if answer.status_code == 200:
            job = answer.json()
            if job["status"] in TERMINAL:
                return job
        time.sleep(0.1)
    pytest.fail(f"job {job_id} not terminal after {timeout_s}s; last seen {job}")


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    """Poll `condition` until it holds; fail naming `what` at the deadline (never a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not true after {timeout_s}s: {what}")
        time.sleep(0.1)


def queue_drained(local_stack: LocalStack, logical_id: str) -> bool:
    """No message of this template queue is waiting or being processed."""
    attributes = local_stack.aws("sqs").get_queue_attributes(
        QueueUrl=local_stack.state["queues"][logical_id],
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return all(int(value) == 0 for value in attributes.values())


def wait_for_job(
    client: httpx.Client, job_id: str, condition: Callable[[dict[str, Any]], bool], timeout_s: float = 30
) -> dict[str, Any]:
    """GET the job until `condition(job)` holds; fail with the last state at the deadline."""
    deadline = time.monotonic() + timeout_s
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if condition(job):
            return job
        time.sleep(0.2)
    pytest.fail(f"job {job_id}: condition not met after {timeout_s}s; last seen {job}")
