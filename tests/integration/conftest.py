"""Integration fixtures: one real `baton dev` (moto server + model simulator + local API) per session."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from baton.models import SETTLED_STATUSES
from baton_dev.launcher import LaunchedStack, StackConfig
from baton_dev.simulator import SimulatorConfig

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 360  # a 2-core machine at load 30 has taken 140 s (plus slow imports)
SWEEP_EVERY_S = 2
MAX_ATTEMPTS = 3
MAX_RECEIVE_COUNT = 4
WEBHOOK_SCHEDULE = "1s,2s,3s"
# The origin a browser client of the shared stack runs on (CORS on, as a web app would set it).
CORS_ORIGIN = "http://app.localhost:5173"
# A short webhook schedule, so delivery retries and exhaustion show within seconds.
WEBHOOK_OVERRIDES = {"WebhookRetrySchedule": WEBHOOK_SCHEDULE, "CorsAllowOrigin": CORS_ORIGIN}
# A job left in needs_review fails as review_expired this long after it stopped (default: retention).
REVIEW_EXPIRY_S = 20
TEST_PARAMETERS = {
    "MaxAttempts": str(MAX_ATTEMPTS),
    "MaxReceiveCount": str(MAX_RECEIVE_COUNT),
    "ReviewExpirySeconds": str(REVIEW_EXPIRY_S),
    # Fast retries so the reliability tests finish in seconds (defaults: 2 s base, 300 s cap).
    "RetryBaseSeconds": "0.5",
    "RetryCapSeconds": "2",
}


@dataclass
class Tenant:
    name: str
    api_key: str
    webhook_secret: str


class LocalStack(LaunchedStack):
    """A launched `baton dev` with what the tests ask of it."""

    def client(self, tenant: Tenant | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {tenant.api_key}"} if tenant else {}
        return httpx.Client(base_url=self.api_url, headers=headers, timeout=40)

    def model_calls(self, job_id: str) -> list[dict[str, Any]]:
        """The local model's own request log for one job (every call, including refused ones)."""
        log = httpx.get(f"{self.simulator_url}/_sim/requests", timeout=10).json()
        entries = log["requests"] if isinstance(log, dict) else log
        return [entry for entry in entries if entry.get("job_id") == job_id]

    def stats(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.api_url}/_local/stats", timeout=10).json())

    def create_tenant(self, name: str) -> Tenant:
        issued = self.create_api_key(name)
        return Tenant(
            name=issued["tenant"], api_key=issued["api_key"], webhook_secret=issued["webhook_secret"]
        )


def stack_config(state_dir: Path, overrides: Mapping[str, str] | None = None) -> StackConfig:
    """The integration suite's stack in `state_dir`, with extra template parameter overrides."""
    return StackConfig(
        state_dir=state_dir,
        schedule_every_s=SWEEP_EVERY_S,
        simulator=SimulatorConfig(latency_ms=20),
        parameters={**TEST_PARAMETERS, **(overrides or {})},
    )


@contextmanager
def running_stack(state_dir: Path, overrides: Mapping[str, str] | None = None) -> Iterator[LocalStack]:
    """A real `baton dev` in `state_dir` with extra template parameter overrides, stopped after."""
    stack = LocalStack(stack_config(state_dir, overrides)).start(START_TIMEOUT_S)
    try:
        yield stack
    finally:
        stopped = stack.stop(timeout_s=20)
    assert stopped, f"baton dev did not stop on SIGTERM within 20 s:\n{stack.tail()}"


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
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
