"""InferenceMode=sync (the default): the model call is streamed, and cancelling the job closes the
stream (the provider stops generating); usage counts what was received."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.integration


def wait_for(api: httpx.Client, job_id: str, what: str, check: Any, timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = api.get(f"/v1/jobs/{job_id}").json()
        if check(job):
            return job
        time.sleep(0.2)
    pytest.fail(f"job {job_id}: never {what} within {timeout_s}s; last seen {job}")


def test_cancelling_a_job_mid_call_closes_the_model_stream(api: httpx.Client) -> None:
    # The model takes a minute to its first token: far longer than this test waits.
    answer = api.post("/v1/jobs", json={"input": {"prompt": "Tell me about tides. [sim:slow=60000]"}})
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    wait_for(api, job_id, "in infer", lambda job: job["current_step"] == "infer")
    assert api.delete(f"/v1/jobs/{job_id}").status_code == 200
    job = wait_for(api, job_id, "its call cancelled", lambda job: "provider_call" in job)
    assert job["status"] == "cancelled"
    assert job["provider_call"] == {"mode": "sync", "response_id": None, "cancelled": True}
    # The prompt was sent (and is billed); no token came back before the stream was closed.
    assert job["usage"]["prompt_tokens"] > 0
    assert job["usage"]["completion_tokens"] == 0
