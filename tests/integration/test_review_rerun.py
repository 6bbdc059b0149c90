"""Review (approve, reject, expire) and re-run over `baton dev`: the real stages, queues and sweeper."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from .conftest import REVIEW_EXPIRY_S, SWEEP_EVERY_S, wait_for_terminal

pytestmark = pytest.mark.integration

LOOPING = {"input": {"prompt": "What is 2 + 2?"}, "parameters": {"tools": ["calculator"], "max_depth": 1}}


def stopped_for_review(api: httpx.Client) -> dict[str, Any]:
    answer = api.post("/v1/jobs", json=LOOPING)
    assert answer.status_code == 202, answer.text
    job = wait_for_terminal(api, answer.json()["id"])
    assert (job["status"], job["error"]["type"], job["version"]) == ("needs_review", "depth_limit", 1)
    return job


def wait_for_status(api: httpx.Client, job_id: str, status: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = api.get(f"/v1/jobs/{job_id}", params={"wait": 2}).json()
        if job["status"] == status:
            return job
    pytest.fail(f"job {job_id} not {status} after {timeout_s}s; last seen {job}")


def test_approval_runs_the_job_on_as_a_new_version(api: httpx.Client) -> None:
    job = stopped_for_review(api)
    approved = api.post(f"/v1/jobs/{job['id']}/review", json={"decision": "approve", "max_depth": 3})
    assert approved.status_code == 200, approved.text
    assert (approved.json()["status"], approved.json()["version"]) == ("processing", 2)
    done = wait_for_status(api, job["id"], "completed", 60)
    assert (done["version"], done["depth"]) == (2, 1)
    assert "4" in done["result"]["text"]


def test_rejection_fails_the_job(api: httpx.Client) -> None:
    job = stopped_for_review(api)
    rejected = api.post(f"/v1/jobs/{job['id']}/review", json={"decision": "reject", "reason": "not needed"})
    assert rejected.status_code == 200
    assert rejected.json()["error"]["type"] == "review_rejected"
    assert api.get(f"/v1/jobs/{job['id']}").json()["status"] == "failed"
    assert api.post(f"/v1/jobs/{job['id']}/review", json={"decision": "approve"}).status_code == 409


def test_a_job_nobody_reviews_fails_as_review_expired(api: httpx.Client) -> None:
    job = stopped_for_review(api)
    expired = wait_for_status(api, job["id"], "failed", REVIEW_EXPIRY_S + 10 * SWEEP_EVERY_S + 30)
    assert expired["error"]["type"] == "review_expired"


def test_rerun_makes_a_new_job_and_leaves_the_original(api: httpx.Client) -> None:
    submitted = api.post("/v1/jobs", json={"input": {"prompt": "Queues decouple. Workers pull."}})
    original = wait_for_terminal(api, submitted.json()["id"])
    assert original["status"] == "completed"
    answer = api.post(f"/v1/jobs/{original['id']}/rerun", json={"parameters": {"max_tokens": 64}})
    assert answer.status_code == 202, answer.text
    assert answer.headers["Location"] == f"/v1/jobs/{answer.json()['id']}"
    rerun = wait_for_terminal(api, answer.json()["id"])
    assert rerun["status"] == "completed"
    assert rerun["rerun_of"] == original["id"]
    assert api.get(f"/v1/jobs/{original['id']}").json() == original
