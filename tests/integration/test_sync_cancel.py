"""InferenceMode=sync (the default): the model call is streamed, and cancelling the job closes the
stream (the provider stops generating); usage counts what was received."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.conftest import wait_for_job

pytestmark = pytest.mark.integration


def test_cancelling_a_job_mid_call_closes_the_model_stream(api: httpx.Client) -> None:
    # The model takes ten minutes to its first token: far longer than this test waits.
    answer = api.post("/v1/jobs", json={"input": {"prompt": "Tell me about tides. [sim:slow=600000]"}})
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    wait_for_job(api, job_id, lambda job: job["current_step"] == "infer", 180)
    assert api.delete(f"/v1/jobs/{job_id}").status_code == 200
    job = wait_for_job(api, job_id, lambda job: "provider_call" in job, 180)
    assert job["status"] == "cancelled"
    assert job["provider_call"] == {"mode": "sync", "response_id": None, "cancelled": True}
    # The prompt was sent (and is billed); no token came back before the stream was closed.
    assert job["usage"]["prompt_tokens"] > 0
    assert job["usage"]["completion_tokens"] == 0
