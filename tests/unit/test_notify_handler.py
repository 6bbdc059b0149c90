"""The notify stage (functions/notify): terminal events -> webhooks signed per Standard Webhooks."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

import baton.egress
import baton.llm
from baton.llm import Completion
from baton.records import Usage
from baton.store import JobStore
from baton.tenants import TenantStore

if TYPE_CHECKING:
    from conftest import AwsStack, LoadedFunction

HOOK = "https://hooks.example.com/baton"
SAMPLE_EVENT = Path(__file__).resolve().parents[2] / "events" / "sqs-notify-terminal-event.json"


PUBLIC_ADDRESS = "93.184.216.34"


@dataclass
class Receiver:
    """The network under Baton's pinned transport: records each delivery and answers with
    `status` (or raises). Every name resolves to a public address."""

    status: int = 204
    error: Exception | None = None
    deliveries: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        # The transport connects to the checked address; the name stays in Host (and SNI).
        url = str(request.url.copy_with(host=request.headers["host"].split(":")[0]))
        self.deliveries.append(
            {
                "url": url,
                "address": request.url.host,
                "body": request.content.decode(),
                "headers": dict(request.headers),
            }
        )
        if self.error is not None:
            raise self.error
        return httpx.Response(self.status, request=request)


def patch_network(monkeypatch: pytest.MonkeyPatch, handler: Any) -> None:
    monkeypatch.setattr(baton.egress, "network_transport", lambda: httpx.MockTransport(handler))
    monkeypatch.setattr(
        baton.egress, "resolve", lambda host, port: [baton.egress.ipaddress.ip_address(PUBLIC_ADDRESS)]
    )


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Receiver:
    fake = Receiver()
    patch_network(monkeypatch, fake)
    return fake


@pytest.fixture
def secret(aws: AwsStack) -> str:
    return TenantStore(aws.jobs_table).create_api_key("acme").webhook_secret


@pytest.fixture
def finished_job(aws: AwsStack, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Runs a job through the API and the infer stage; returns (job id, notify-queue event)."""
    api, infer = aws.load("ApiFunction"), aws.load("InferFunction")
    answer = Completion(text="Done.", finish_reason="stop", tool_calls=None, usage=Usage(total_tokens=5))
    monkeypatch.setattr(baton.llm, "complete", lambda *args, **kwargs: answer)

    def run(webhook: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"input": {"prompt": "hi"}, "metadata": {"ticket": "OPS-1"}}
        if webhook is not None:
            body["webhook"] = webhook
        response = api(aws.api_event("api-create-job.json", body=body, drop_headers=("Idempotency-Key",)))
        job_id = str(json.loads(response["body"])["id"])
        assert infer(aws.take_event("InferQueue")) == {"batchItemFailures": []}
        return job_id, aws.take_event("NotifyQueue")

    return run


def test_completed_job_is_delivered_signed(
    aws: AwsStack, notify: LoadedFunction, receiver: Receiver, secret: str, finished_job: Any
) -> None:
    job_id, event = finished_job({"url": HOOK})
    before = int(time.time())
    assert notify(event) == {"batchItemFailures": []}

    [delivery] = receiver.deliveries
    assert delivery["url"] == HOOK
    headers = delivery["headers"]
    assert headers["content-type"] == "application/json"
    assert headers["webhook-id"] == f"msg_{job_id}_completed"
    assert abs(int(headers["webhook-timestamp"]) - before) <= 5
    assert headers["webhook-signature"].startswith("v1,")
    # Any Standard Webhooks library verifies it with the tenant's secret...
    payload = Webhook(secret).verify(delivery["body"], headers)
    assert payload["type"] == "job.completed"
    data = payload["data"]
    assert (data["id"], data["status"], data["metadata"]) == (job_id, "completed", {"ticket": "OPS-1"})
    assert data["result"] == {"text": "Done.", "finish_reason": "stop"}
    assert payload["timestamp"] == data["updated_at"]
    # ... and no other tenant's secret does.
    other = TenantStore(aws.jobs_table).create_api_key("globex").webhook_secret
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(delivery["body"], headers)

    record = JobStore(aws.jobs_table).get("acme", job_id)
    assert record.status.value == "completed"
    assert record.timings.notify_ms is not None


def test_webhook_id_is_stable_across_a_retry(
    notify: LoadedFunction, receiver: Receiver, secret: str, finished_job: Any
) -> None:
    _, event = finished_job({"url": HOOK})
    receiver.status = 500
    with pytest.raises(BatchProcessingError):
        notify(event)
    receiver.status = 200
    assert notify(event) == {"batchItemFailures": []}  # SQS redelivers the message
    first, second = receiver.deliveries
    assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"]
    assert first["body"] == second["body"]
    for delivery in (first, second):
        Webhook(secret).verify(delivery["body"], delivery["headers"])


def test_event_delivered_twice_is_posted_once(
    aws: AwsStack, notify: LoadedFunction, receiver: Receiver, secret: str, finished_job: Any
) -> None:
    _, event = finished_job({"url": HOOK})
    assert notify(event) == {"batchItemFailures": []}
    # EventBridge and SQS are at-least-once: the same terminal event may arrive again, even on
    # another instance of the function.
    duplicate = {"Records": [dict(event["Records"][0], messageId="another-copy")]}
    assert aws.load("NotifyFunction")(duplicate) == {"batchItemFailures": []}
    assert len(receiver.deliveries) == 1


@pytest.mark.parametrize(
    "failure",
    [{"status": 500}, {"status": 404}, {"status": 302}, {"error": httpx.ConnectError("refused")}],
    ids=["500", "404", "redirect", "unreachable"],
)
def test_failed_delivery_is_retried(
    aws: AwsStack,
    notify: LoadedFunction,
    receiver: Receiver,
    secret: str,
    finished_job: Any,
    failure: dict[str, Any],
) -> None:
    failing_job, failing_event = finished_job({"url": "https://down.example.com/hook"})
    _, working_event = finished_job({"url": HOOK})
    receiver.status = failure.get("status", 204)
    receiver.error = failure.get("error")
    batch = {"Records": failing_event["Records"] + working_event["Records"]}

    def answer(request: httpx.Request) -> httpx.Response:
        if request.headers["host"] == "hooks.example.com":
            return httpx.Response(200, request=request)
        return receiver(request)

    with pytest.MonkeyPatch.context() as patch:
        patch_network(patch, answer)
        result = notify(batch)
    assert result == {"batchItemFailures": [{"itemIdentifier": failing_event["Records"][0]["messageId"]}]}
    assert JobStore(aws.jobs_table).get("acme", failing_job).timings.notify_ms is None


def test_single_failed_delivery_fails_the_invocation(
    notify: LoadedFunction, receiver: Receiver, secret: str, finished_job: Any
) -> None:
    _, event = finished_job({"url": HOOK})
    receiver.status = 503
    with pytest.raises(BatchProcessingError):  # every record failed: SQS redelivers the batch
        notify(event)


def test_webhook_auth_is_sent(
    notify: LoadedFunction, receiver: Receiver, secret: str, finished_job: Any
) -> None:
    _, event = finished_job(
        {"url": HOOK, "auth": {"type": "header", "name": "X-Receiver-Key", "value": "k1"}}
    )
    notify(event)
    headers = receiver.deliveries[0]["headers"]
    assert headers["x-receiver-key"] == "k1"
    Webhook(secret).verify(receiver.deliveries[0]["body"], headers)


def test_job_without_webhook_is_not_delivered(
    notify: LoadedFunction, receiver: Receiver, secret: str, finished_job: Any
) -> None:
    _, event = finished_job(None)
    assert notify(event) == {"batchItemFailures": []}
    assert receiver.deliveries == []


def test_cancelled_job_is_delivered_as_job_cancelled(
    aws: AwsStack, notify: LoadedFunction, receiver: Receiver, secret: str
) -> None:
    api = aws.load("ApiFunction")
    body = {"input": {"prompt": "hi"}, "webhook": {"url": HOOK}}
    response = api(aws.api_event("api-create-job.json", body=body, drop_headers=("Idempotency-Key",)))
    job_id = json.loads(response["body"])["id"]
    api(aws.api_event("api-cancel-job.json", job_id=job_id))
    assert notify(aws.take_event("NotifyQueue")) == {"batchItemFailures": []}
    [delivery] = receiver.deliveries
    assert delivery["headers"]["webhook-id"] == f"msg_{job_id}_cancelled"
    payload = Webhook(secret).verify(delivery["body"], delivery["headers"])
    assert (payload["type"], payload["data"]["status"]) == ("job.cancelled", "cancelled")


def test_sample_event_for_an_unknown_job_is_dropped(
    aws: AwsStack, notify: LoadedFunction, receiver: Receiver
) -> None:
    """events/sqs-notify-terminal-event.json names a job this stack never had: nothing to deliver,
    nothing to retry."""
    event = json.loads(SAMPLE_EVENT.read_text())
    assert notify(event) == {"batchItemFailures": []}
    assert receiver.deliveries == []
