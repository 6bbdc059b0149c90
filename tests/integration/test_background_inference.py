"""InferenceMode=background over a real `baton dev`: the model call outlasts the infer function,
the provider's signed webhook (or a poll) resumes the job, a cancel reaches the provider, and an
unverifiable provider webhook changes nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from tests.integration.conftest import LocalStack, Tenant, running_stack, wait_for_job, wait_for_terminal

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]  # minutes on a loaded machine

INFER_TIMEOUT_S = 30  # the smallest InferFunctionTimeout the template allows
# Two quick polls, then one every 15 minutes: a long job finished before that was woken by the
# webhook, however slow a loaded machine makes the webhook's round trip.
OVERRIDES = {
    "InferenceMode": "background",
    "InferFunctionTimeout": str(INFER_TIMEOUT_S),
    "BackgroundPollSchedule": "1s,2s,15m",
}
WEBHOOK_PATH = "/v1/provider-webhooks/openai"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with running_stack(tmp_path_factory.mktemp("baton-background"), OVERRIDES) as local:
        yield local


@pytest.fixture(scope="module")
def tenant(stack: LocalStack) -> Tenant:
    return stack.create_tenant("background")


@pytest.fixture
def api(stack: LocalStack, tenant: Tenant) -> Iterator[httpx.Client]:
    with stack.client(tenant) as client:
        yield client


def submit(api: httpx.Client, prompt: str) -> str:
    answer = api.post("/v1/jobs", json={"input": {"prompt": prompt}})
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def paid_calls(stack: LocalStack, job_id: str) -> list[dict[str, Any]]:
    return [entry for entry in stack.model_calls(job_id) if entry["status"] == 200]


def sim_json(stack: LocalStack, path: str) -> Any:
    return httpx.get(f"{stack.simulator_url}{path}", timeout=10).json()


def webhooks_sent(stack: LocalStack, response_id: str, timeout_s: float = 200) -> list[dict[str, Any]]:
    """The simulator's webhooks for one response, once it has recorded an answer to one."""
    deadline = time.monotonic() + timeout_s
    while True:
        hooks = [hook for hook in sim_json(stack, "/_sim/webhooks") if hook["response_id"] == response_id]
        if any(hook.get("status_code") for hook in hooks) or time.monotonic() > deadline:
            return hooks
        time.sleep(0.2)


def provider_secret(stack: LocalStack) -> str:
    secrets = stack.aws("secretsmanager")
    return str(secrets.get_secret_value(SecretId="baton-local/provider-webhook-secret")["SecretString"])


def signed(secret: str, body: str) -> dict[str, str]:
    now = datetime.now(tz=UTC)
    event_id = f"evt_test{int(now.timestamp() * 1000)}"
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(event_id, now, body),
        "content-type": "application/json",
    }


def test_a_model_call_longer_than_the_infer_timeout_completes_resumed_by_the_webhook(
    stack: LocalStack, api: httpx.Client
) -> None:
    slow_ms = (INFER_TIMEOUT_S + 5) * 1000
    job_id = submit(api, f"Summarize: the tide came in slowly over the flats. [sim:slow={slow_ms}]")
    job = wait_for_terminal(api, job_id, timeout_s=INFER_TIMEOUT_S + 240)
    assert job["status"] == "completed", job
    assert "tide" in job["result"]["text"]
    assert job["provider_call"]["mode"] == "background"
    response_id = job["provider_call"]["response_id"]
    assert response_id.startswith("resp_")
    assert job["usage"]["total_tokens"] > 0
    # One paid call, although the model took longer than any infer invocation may run.
    assert [entry["path"] for entry in paid_calls(stack, job_id)] == ["/v1/responses"]
    # The provider's signed webhook reached Baton, was accepted, and is what resumed the job.
    hooks = webhooks_sent(stack, response_id)
    assert [(hook["type"], hook["status_code"]) for hook in hooks] == [("response.completed", 200)]
    finished = [
        json.loads(line)
        for line in (stack.state_dir / "logs" / "InferFunction.log").read_text().splitlines()
        if job_id in line and "background response finished" in line
    ]
    assert [entry["by"].split(":")[0] for entry in finished] == ["webhook"]


def test_without_webhooks_the_delayed_polls_find_the_answer(stack: LocalStack, api: httpx.Client) -> None:
    faults = f"{stack.simulator_url}/_sim/faults"
    url = httpx.get(faults, timeout=10).json()["webhook_url"]
    assert url.endswith(WEBHOOK_PATH)
    httpx.post(faults, json={"webhook_url": ""}, timeout=10).raise_for_status()
    try:
        job_id = submit(api, "Summarize: the lighthouse keeper logged every ship. [sim:slow=1500]")
        job = wait_for_terminal(api, job_id, timeout_s=60)
    finally:
        httpx.post(faults, json={"webhook_url": url}, timeout=10).raise_for_status()
    assert job["status"] == "completed", job
    assert [entry["path"] for entry in paid_calls(stack, job_id)] == ["/v1/responses"]
    response_id = job["provider_call"]["response_id"]
    assert not [hook for hook in sim_json(stack, "/_sim/webhooks") if hook["response_id"] == response_id]


def test_cancel_mid_call_cancels_the_provider_response_and_forged_webhooks_change_nothing(
    stack: LocalStack, api: httpx.Client
) -> None:
    job_id = submit(api, "Write a very long essay about the sea. [sim:slow=600000]")
    job = wait_for_job(
        api, job_id, lambda job: (job.get("provider_call") or {}).get("response_id") is not None, 180
    )
    response_id = job["provider_call"]["response_id"]
    body = json.dumps({"id": "evt_forged", "type": "response.completed", "data": {"id": response_id}})

    # Unverifiable: a wrong secret, and no signature at all. 400, and the job does not move.
    wrong = signed("whsec_" + "A" * 44, body)
    for headers in (wrong, {"content-type": "application/json"}):
        answer = httpx.post(f"{stack.api_url}{WEBHOOK_PATH}", content=body, headers=headers, timeout=90)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["type"] == "invalid_webhook"
    assert api.get(f"/v1/jobs/{job_id}").json()["status"] == "processing"

    # Correctly signed but for a response Baton never made: acknowledged, nothing to do.
    secret = provider_secret(stack)
    stranger = json.dumps({"id": "evt_x", "type": "response.completed", "data": {"id": "resp_unknown"}})
    answer = httpx.post(
        f"{stack.api_url}{WEBHOOK_PATH}", content=stranger, headers=signed(secret, stranger), timeout=90
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["outcome"] == "unknown_response"

    cancelled = api.delete(f"/v1/jobs/{job_id}")
    assert cancelled.status_code == 200, cancelled.text
    job = wait_for_job(api, job_id, lambda job: job["provider_call"]["cancelled"] is True, 180)
    assert job["status"] == "cancelled"
    responses = {entry["id"]: entry for entry in sim_json(stack, "/_sim/responses")}
    assert responses[response_id]["status"] == "cancelled"
    assert len(paid_calls(stack, job_id)) == 1
