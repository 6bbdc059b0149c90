"""Unhappy paths through the real local runtime: each ends in exactly one honest terminal state."""

from __future__ import annotations

import json
from itertools import pairwise
from typing import Any

import httpx
import pytest

from baton.models import StageCommand, Step
from baton_dev.webhook_receiver import WebhookReceiver

from .conftest import (
    MAX_ATTEMPTS,
    MAX_RECEIVE_COUNT,
    LocalStack,
    Tenant,
    queue_drained,
    wait_for_terminal,
    wait_until,
)
from .test_dead_letters import archived_letter

pytestmark = pytest.mark.integration

TEXT = "Retries should be invisible to clients. Workers back off politely. Poison messages are parked."


def submit(api: httpx.Client, prompt: str, **extra: Any) -> str:
    answer = api.post("/v1/jobs", json={"input": {"prompt": prompt}, **extra})
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def test_a_rate_limited_call_is_retried_after_retry_after_and_completes(
    local_stack: LocalStack, api: httpx.Client
) -> None:
    job_id = submit(api, f"[sim:429x2] {TEXT}")
    job = wait_for_terminal(api, job_id)

    assert job["status"] == "completed", job
    calls = local_stack.model_calls(job_id)
    assert [call["status"] for call in calls] == [429, 429, 200]
    # SQS-native backoff honoured the simulator's Retry-After (1 s) between attempts.
    gaps = [later["ts"] - earlier["ts"] for earlier, later in pairwise(calls)]
    assert all(gap >= 0.9 for gap in gaps), gaps


def test_a_provider_that_keeps_failing_fails_the_job_as_retryable_after_max_attempts(
    local_stack: LocalStack, api: httpx.Client
) -> None:
    job_id = submit(api, f"[sim:503] {TEXT}")
    job = wait_for_terminal(api, job_id, timeout_s=90)

    assert job["status"] == "failed"
    assert job["error"]["type"] == "model_unavailable"
    assert job["error"]["retryable"] is True
    assert f"after {MAX_ATTEMPTS} attempts" in job["error"]["message"]
    assert len(local_stack.model_calls(job_id)) == MAX_ATTEMPTS


@pytest.mark.parametrize(
    ("prompt", "model", "error_type"),
    [
        (f"[sim:context_length] {TEXT}", None, "context_length_exceeded"),
        (TEXT, "no-such-model", "invalid_model"),
    ],
)
def test_permanent_model_errors_fail_at_once_without_burning_retries(
    local_stack: LocalStack, api: httpx.Client, prompt: str, model: str | None, error_type: str
) -> None:
    job_id = submit(api, prompt, **({"model": model} if model else {}))
    job = wait_for_terminal(api, job_id)

    assert job["status"] == "failed"
    assert job["error"]["type"] == error_type
    assert job["error"]["retryable"] is False
    assert len(local_stack.model_calls(job_id)) == 1


def test_a_poison_prompt_that_crashes_the_worker_ends_in_the_dlq_and_fails_its_job(
    local_stack: LocalStack, api: httpx.Client, tenant: Tenant
) -> None:
    receiver = WebhookReceiver(tenant.webhook_secret)
    try:
        job_id = submit(api, f"[sim:malformed] {TEXT}", webhook={"url": receiver.url})
        job = wait_for_terminal(api, job_id, timeout_s=120)
        assert job["status"] == "failed", job
        assert job["error"]["type"] == "dead_lettered"
        assert "infer step failed" in job["error"]["message"]
        # The crash is not classified, so SQS's redrive decided: MaxReceiveCount deliveries.
        assert len(local_stack.model_calls(job_id)) == MAX_RECEIVE_COUNT
        # The dead letter is kept for operators in the archive, under the id the error names.
        archive_id = job["error"]["message"].rsplit("dead letter ", 1)[1]
        assert archived_letter(local_stack, archive_id)["job_id"] == job_id
        # And the webhook still fired for the failure.
        receiver.wait_until(
            lambda events: any(e.payload and e.payload["data"]["id"] == job_id for e in events), timeout=30
        )
    finally:
        receiver.stop()


def test_an_agent_loop_runs_builtin_tools_hop_by_hop(local_stack: LocalStack, api: httpx.Client) -> None:
    job_id = submit(api, "What is 17 * 23 + 4?", parameters={"tools": ["calculator"]})
    job = wait_for_terminal(api, job_id)

    assert job["status"] == "completed", job
    assert job["depth"] == 1
    assert "395" in job["result"]["text"]
    calls = local_stack.model_calls(job_id)
    assert [call["step_key"].rsplit(":", 1)[1] for call in calls] == ["0", "1"]
    # Usage adds up over both inference hops.
    assert job["usage"]["total_tokens"] == sum(
        call["prompt_tokens"] + call["completion_tokens"] for call in calls
    )


def test_the_depth_guard_stops_a_loop_for_human_review(
    local_stack: LocalStack, api: httpx.Client, tenant: Tenant
) -> None:
    receiver = WebhookReceiver(tenant.webhook_secret)
    try:
        job_id = submit(
            api,
            "What is 2 + 2?",
            parameters={"tools": ["calculator"], "max_depth": 1},
            webhook={"url": receiver.url},
        )
        job = wait_for_terminal(api, job_id)
        assert job["status"] == "needs_review"
        assert job["error"]["type"] == "depth_limit"
        assert len(local_stack.model_calls(job_id)) == 1
        receiver.wait_until(
            lambda events: any(e.payload and e.payload["data"]["id"] == job_id for e in events), timeout=30
        )
        [event] = [e for e in receiver.events if e.payload and e.payload["data"]["id"] == job_id]
        assert event.payload is not None and event.payload["type"] == "job.needs_review"
    finally:
        receiver.stop()
    review = _peek(local_stack, local_stack.state["queues"]["ReviewQueue"])
    assert any(json.loads(body)["detail"]["job_id"] == job_id for body in review)


def test_the_token_budget_stops_a_job_for_review(api: httpx.Client) -> None:
    job = wait_for_terminal(api, submit(api, TEXT, parameters={"max_total_tokens": 5}))
    assert job["status"] == "needs_review"
    assert job["error"]["type"] == "token_budget"


def test_a_job_past_its_timeout_fails_as_timeout(api: httpx.Client) -> None:
    job = wait_for_terminal(api, submit(api, f"[sim:slow=8000] {TEXT}", parameters={"timeout_seconds": 2}))
    assert job["status"] == "failed"
    assert job["error"]["type"] == "timeout"


def test_a_duplicated_command_never_calls_the_model_twice(local_stack: LocalStack, api: httpx.Client) -> None:
    job_id = submit(api, f"[sim:slow=1500] {TEXT}")
    job = api.get(f"/v1/jobs/{job_id}").json()
    # The same command delivered again (at-least-once delivery, a duplicate send...).
    tenant_id = "acme"
    duplicate = StageCommand(
        job_id=job_id, tenant_id=tenant_id, step=Step.INFER, version=1, depth=job["depth"]
    )
    sqs = local_stack.aws("sqs")
    for _ in range(2):
        sqs.send_message(
            QueueUrl=local_stack.state["queues"]["InferQueue"], MessageBody=duplicate.model_dump_json()
        )
    assert wait_for_terminal(api, job_id)["status"] == "completed"
    wait_until(
        lambda: queue_drained(local_stack, "InferQueue"), "both duplicates were processed (and dropped)"
    )
    assert len([call for call in local_stack.model_calls(job_id) if call["status"] == 200]) == 1


def _peek(local_stack: LocalStack, queue_url: str) -> list[str]:
    answer = local_stack.aws("sqs").receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=10, VisibilityTimeout=0, WaitTimeSeconds=1
    )
    return [message["Body"] for message in answer.get("Messages", [])]
