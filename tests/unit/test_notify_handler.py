"""The notify stage (functions/notify): terminal events -> webhooks signed per Standard Webhooks."""

from __future__ import annotations

import base64
import json
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import httpx
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

import baton.blobs
import baton.egress
import baton.llm
from baton.llm import Completion
from baton.records import Usage
from baton.store import JobStore
from baton.tenants import TenantStore
from baton.webhooks import DeliveryMessage, DeliveryStore

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
def deliver(aws: AwsStack) -> LoadedFunction:
    return aws.load("DeliverFunction")


def attempt_queued(aws: AwsStack, deliver: LoadedFunction) -> Any:
    """Run the deliver function on what the delivery queue holds (one attempt per message)."""
    return deliver(aws.take_event("WebhookDeliveryQueue"))


def deliveries(aws: AwsStack, job_id: str) -> list[dict[str, Any]]:
    return [d.public_view() for d in DeliveryStore(aws.jobs_table).list("acme", job_id)]


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
    aws: AwsStack,
    notify: LoadedFunction,
    deliver: LoadedFunction,
    receiver: Receiver,
    secret: str,
    finished_job: Any,
) -> None:
    job_id, event = finished_job({"url": HOOK})
    before = int(time.time())
    assert notify(event) == {"batchItemFailures": []}
    assert receiver.deliveries == []  # the notify stage only records and queues the delivery
    assert attempt_queued(aws, deliver) == {"batchItemFailures": []}

    [delivery] = receiver.deliveries
    assert delivery["url"] == HOOK
    assert delivery["address"] == PUBLIC_ADDRESS
    headers = delivery["headers"]
    assert headers["content-type"] == "application/json"
    assert headers["webhook-id"] == f"msg_{job_id}_completed"
    assert abs(int(headers["webhook-timestamp"]) - before) <= 5
    assert headers["webhook-signature"].startswith("v1,")
    assert " " not in headers["webhook-signature"]  # one secret, one signature
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

    [logged] = deliveries(aws, job_id)
    assert logged["status"] == "delivered" and logged["next_attempt_at"] is None
    [attempt] = logged["attempts"]
    assert (attempt["status_code"], attempt["error"]) == (204, None)
    assert attempt["duration_ms"] >= 0
    record = JobStore(aws.jobs_table).get("acme", job_id)
    assert record.status.value == "completed"
    assert record.timings.notify_ms is not None


def test_failed_attempt_is_logged_and_retried_with_the_same_webhook_id(
    aws: AwsStack, receiver: Receiver, secret: str, finished_job: Any
) -> None:
    notify = aws.load("NotifyFunction")
    deliver = aws.load("DeliverFunction", WEBHOOK_RETRY_SCHEDULE="0s,0s")
    job_id, event = finished_job({"url": HOOK})
    notify(event)
    receiver.status = 503
    assert attempt_queued(aws, deliver) == {"batchItemFailures": []}  # recorded, not raised
    [logged] = deliveries(aws, job_id)
    assert logged["status"] == "pending" and logged["next_attempt_at"] is not None
    assert [(a["status_code"], a["error"]) for a in logged["attempts"]] == [(503, "http_error")]
    receiver.status = 200
    attempt_queued(aws, deliver)
    first, second = receiver.deliveries
    assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"] == f"msg_{job_id}_completed"
    assert first["body"] == second["body"]
    for delivery in (first, second):
        Webhook(secret).verify(delivery["body"], delivery["headers"])
    [logged] = deliveries(aws, job_id)
    assert logged["status"] == "delivered"
    assert [a["status_code"] for a in logged["attempts"]] == [503, 200]
    assert aws.receive("WebhookDeliveryQueue") == []


@pytest.mark.parametrize(
    "failure",
    [{"status": 500}, {"status": 404}, {"status": 302}, {"error": httpx.ConnectError("refused")}],
    ids=["500", "404", "redirect", "unreachable"],
)
def test_every_scheduled_attempt_failing_exhausts_the_delivery(
    aws: AwsStack, receiver: Receiver, secret: str, finished_job: Any, failure: dict[str, Any]
) -> None:
    notify = aws.load("NotifyFunction")
    deliver = aws.load("DeliverFunction", WEBHOOK_RETRY_SCHEDULE="0s,0s")
    job_id, event = finished_job({"url": HOOK})
    notify(event)
    receiver.status = failure.get("status", 204)
    receiver.error = failure.get("error")
    for _ in range(3):
        attempt_queued(aws, deliver)
    assert aws.receive("WebhookDeliveryQueue") == []
    [logged] = deliveries(aws, job_id)
    assert logged["status"] == "exhausted" and logged["next_attempt_at"] is None
    assert len(logged["attempts"]) == 3 == len(receiver.deliveries)
    assert all(a["error"] for a in logged["attempts"])
    assert JobStore(aws.jobs_table).get("acme", job_id).status.value == "completed"


def test_410_gone_stops_at_once(
    aws: AwsStack,
    notify: LoadedFunction,
    deliver: LoadedFunction,
    receiver: Receiver,
    secret: str,
    finished_job: Any,
) -> None:
    job_id, event = finished_job({"url": HOOK})
    notify(event)
    receiver.status = 410
    attempt_queued(aws, deliver)
    [logged] = deliveries(aws, job_id)
    assert (logged["status"], logged["attempts"][0]["error"]) == ("failed", "gone")
    assert aws.receive("WebhookDeliveryQueue") == []


def test_retry_after_is_honoured(
    aws: AwsStack,
    notify: LoadedFunction,
    deliver: LoadedFunction,
    receiver: Receiver,
    secret: str,
    finished_job: Any,
) -> None:
    job_id, event = finished_job({"url": HOOK})
    notify(event)

    def busy(request: httpx.Request) -> httpx.Response:
        receiver.deliveries.append({"headers": dict(request.headers)})
        return httpx.Response(429, headers={"Retry-After": "120"}, request=request)

    with pytest.MonkeyPatch.context() as patch:
        patch_network(patch, busy)
        before = time.time()
        attempt_queued(aws, deliver)
    [logged] = deliveries(aws, job_id)
    assert logged["status"] == "pending"
    # The schedule says 5 s; the receiver asked for 120 s: never sooner.
    due = datetime.fromisoformat(logged["next_attempt_at"]).timestamp()
    assert due >= before + 120
    assert delayed_messages(aws) == 1


def delayed_messages(aws: AwsStack) -> int:
    attributes = boto3.client("sqs").get_queue_attributes(
        QueueUrl=aws.queue_url("WebhookDeliveryQueue"), AttributeNames=["ApproximateNumberOfMessagesDelayed"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessagesDelayed"])


def test_a_wait_beyond_sqs_15_minutes_takes_hops(
    aws: AwsStack, deliver: LoadedFunction, receiver: Receiver, secret: str, finished_job: Any
) -> None:
    notify = aws.load("NotifyFunction")
    _, event = finished_job({"url": HOOK})
    notify(event)
    [queued] = aws.receive("WebhookDeliveryQueue")
    first = DeliveryMessage.model_validate_json(queued["Body"])
    due = first.due_ms + 2 * 3600 * 1000  # as if the schedule said 2 h
    early = first.model_copy(update={"due_ms": due})
    webhooks = deliver.module.webhooks
    assert webhooks.attempt(early) == {"outcome": "waiting", "due_ms": due}
    assert receiver.deliveries == []  # not attempted before it is due
    assert delayed_messages(aws) == 1


def test_event_delivered_twice_is_posted_once(
    aws: AwsStack,
    notify: LoadedFunction,
    deliver: LoadedFunction,
    receiver: Receiver,
    secret: str,
    finished_job: Any,
) -> None:
    _, event = finished_job({"url": HOOK})
    assert notify(event) == {"batchItemFailures": []}
    # EventBridge and SQS are at-least-once: the same terminal event may arrive again, even on
    # another instance of the function, and the same delivery message twice.
    duplicate = {"Records": [dict(event["Records"][0], messageId="another-copy")]}
    assert aws.load("NotifyFunction")(duplicate) == {"batchItemFailures": []}
    messages = aws.receive("WebhookDeliveryQueue")
    # One invocation per copy: the in-process moto of unit tests is not safe for concurrent
    # conditional writes (DynamoDB is), so the copies are not raced inside one batch here.
    for message in [*messages, messages[0]]:
        assert deliver(aws.sqs_event("WebhookDeliveryQueue", [message])) == {"batchItemFailures": []}
    assert len(receiver.deliveries) == 1


def test_a_slow_receiver_does_not_delay_another(
    aws: AwsStack,
    notify: LoadedFunction,
    deliver: LoadedFunction,
    receiver: Receiver,
    secret: str,
    finished_job: Any,
) -> None:
    _, slow_event = finished_job({"url": "https://slow.example.com/hook"})
    _, fast_event = finished_job({"url": HOOK})
    notify({"Records": slow_event["Records"] + fast_event["Records"]})
    release = threading.Event()
    answered: dict[str, float] = {}

    def network(request: httpx.Request) -> httpx.Response:
        host = request.headers["host"]
        if host == "slow.example.com":
            assert release.wait(10)
        answered[host] = time.monotonic()
        if host != "slow.example.com":
            release.set()  # the slow one answers only once the fast one has been answered
        return httpx.Response(204, request=request)

    with pytest.MonkeyPatch.context() as patch:
        patch_network(patch, network)
        assert attempt_queued(aws, deliver) == {"batchItemFailures": []}
    assert answered["hooks.example.com"] <= answered["slow.example.com"]


def test_a_name_resolving_to_loopback_fails_without_retry(
    aws: AwsStack,
    notify: LoadedFunction,
    deliver: LoadedFunction,
    receiver: Receiver,
    secret: str,
    finished_job: Any,
) -> None:
    job_id, event = finished_job({"url": "http://localtest.example/hook"})
    notify(event)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            baton.egress, "resolve", lambda host, port: [baton.egress.ipaddress.ip_address("127.0.0.1")]
        )
        attempt_queued(aws, deliver)
    assert receiver.deliveries == []
    [logged] = deliveries(aws, job_id)
    assert (logged["status"], logged["attempts"][0]["error"]) == ("failed", "blocked_address")
    assert aws.receive("WebhookDeliveryQueue") == []


def test_webhook_auth_is_sent(
    aws: AwsStack,
    notify: LoadedFunction,
    deliver: LoadedFunction,
    receiver: Receiver,
    secret: str,
    finished_job: Any,
) -> None:
    _, event = finished_job(
        {"url": HOOK, "auth": {"type": "header", "name": "X-Receiver-Key", "value": "k1"}}
    )
    notify(event)
    attempt_queued(aws, deliver)
    headers = receiver.deliveries[0]["headers"]
    assert headers["x-receiver-key"] == "k1"
    Webhook(secret).verify(receiver.deliveries[0]["body"], headers)


def test_job_without_webhook_is_not_delivered(
    aws: AwsStack, notify: LoadedFunction, receiver: Receiver, secret: str, finished_job: Any
) -> None:
    job_id, event = finished_job(None)
    assert notify(event) == {"batchItemFailures": []}
    assert aws.receive("WebhookDeliveryQueue") == []
    assert deliveries(aws, job_id) == []


def test_cancelled_job_is_delivered_as_job_cancelled(
    aws: AwsStack, notify: LoadedFunction, deliver: LoadedFunction, receiver: Receiver, secret: str
) -> None:
    api = aws.load("ApiFunction")
    body = {"input": {"prompt": "hi"}, "webhook": {"url": HOOK}}
    response = api(aws.api_event("api-create-job.json", body=body, drop_headers=("Idempotency-Key",)))
    job_id = json.loads(response["body"])["id"]
    api(aws.api_event("api-cancel-job.json", job_id=job_id))
    assert notify(aws.take_event("NotifyQueue")) == {"batchItemFailures": []}
    attempt_queued(aws, deliver)
    [delivery] = receiver.deliveries
    assert delivery["headers"]["webhook-id"] == f"msg_{job_id}_cancelled"
    payload = Webhook(secret).verify(delivery["body"], delivery["headers"])
    assert (payload["type"], payload["data"]["status"]) == ("job.cancelled", "cancelled")


def test_rotation_signs_with_both_secrets_each_verifies_alone(
    aws: AwsStack,
    notify: LoadedFunction,
    deliver: LoadedFunction,
    receiver: Receiver,
    secret: str,
    finished_job: Any,
) -> None:
    rotated = TenantStore(aws.jobs_table).rotate_webhook_secret("acme", overlap_seconds=3600)
    assert rotated.webhook_secret != secret and rotated.webhook_secret.startswith("whsec_")
    _, event = finished_job({"url": HOOK})
    notify(event)
    attempt_queued(aws, deliver)
    [delivery] = receiver.deliveries
    signatures = delivery["headers"]["webhook-signature"].split(" ")
    assert len(signatures) == 2 and all(sig.startswith("v1,") for sig in signatures)
    for one_secret in (rotated.webhook_secret, secret):
        Webhook(one_secret).verify(delivery["body"], delivery["headers"])
    # After previous_valid_until only the new secret signs.
    assert TenantStore(aws.jobs_table).signing_secrets("acme", now=rotated.previous_valid_until_ms + 1) == [
        rotated.webhook_secret
    ]


def test_sample_event_for_an_unknown_job_is_dropped(
    aws: AwsStack, notify: LoadedFunction, receiver: Receiver
) -> None:
    """events/sqs-notify-terminal-event.json names a job this stack never had: nothing to deliver,
    nothing to retry."""
    event = json.loads(SAMPLE_EVENT.read_text())
    assert notify(event) == {"batchItemFailures": []}
    assert aws.receive("WebhookDeliveryQueue") == []


# -- receiver authentication (webhook.auth) -----------------------------------------------------
AUTH_CASES = {
    "basic": (
        {"type": "basic", "username": "baton", "password": "s3cret-pw"},
        "authorization",
        "Basic YmF0b246czNjcmV0LXB3",
    ),
    "bearer": ({"type": "bearer", "token": "s3cret-token"}, "authorization", "Bearer s3cret-token"),
    "header": (
        {"type": "header", "name": "X-Receiver-Key", "value": "s3cret-k1"},
        "x-receiver-key",
        "s3cret-k1",
    ),
}


@pytest.mark.parametrize("case", AUTH_CASES.values(), ids=AUTH_CASES.keys())
def test_auth_is_sent_and_stored_encrypted(
    aws: AwsStack,
    notify: LoadedFunction,
    deliver: LoadedFunction,
    receiver: Receiver,
    secret: str,
    finished_job: Any,
    case: tuple[dict[str, Any], str, str],
) -> None:
    auth, header, expected = case
    job_id, event = finished_job({"url": HOOK, "auth": auth})
    notify(event)
    attempt_queued(aws, deliver)
    [delivery] = receiver.deliveries
    assert delivery["headers"][header] == expected
    Webhook(secret).verify(delivery["body"], delivery["headers"])
    assert_no_plaintext(aws, job_id, "s3cret")


def assert_no_plaintext(aws: AwsStack, job_id: str, needle: str) -> None:
    """Neither the job item nor its delivery items, nor GET, hold the credentials in plain text."""
    table = boto3.client("dynamodb")
    items = table.scan(TableName=aws.jobs_table)["Items"]
    mine = [item for item in items if job_id in json.dumps(item)]
    assert len(mine) >= 2  # the job and its delivery
    assert needle not in json.dumps(mine)
    api = aws.load("ApiFunction")
    answer = api(aws.api_event("api-get-job.json", job_id=job_id))
    assert answer["statusCode"] == 200 and needle not in answer["body"]


def test_query_auth_is_added_to_the_url(
    aws: AwsStack,
    notify: LoadedFunction,
    deliver: LoadedFunction,
    receiver: Receiver,
    secret: str,
    finished_job: Any,
) -> None:
    _, event = finished_job(
        {"url": HOOK + "?tenant=a", "auth": {"type": "query", "name": "key", "value": "q1"}}
    )
    notify(event)
    attempt_queued(aws, deliver)
    assert receiver.deliveries[0]["url"] == HOOK + "?tenant=a&key=q1"


def test_on_behalf_forwards_the_submitting_requests_header(
    aws: AwsStack,
    notify: LoadedFunction,
    deliver: LoadedFunction,
    receiver: Receiver,
    secret: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api, infer = aws.load("ApiFunction"), aws.load("InferFunction")
    answer = Completion(text="Done.", finish_reason="stop", tool_calls=None, usage=Usage(total_tokens=5))
    monkeypatch.setattr(baton.llm, "complete", lambda *args, **kwargs: answer)
    body = {
        "input": {"prompt": "hi"},
        "webhook": {"url": HOOK, "auth": {"type": "on_behalf", "header": "X-User-Token"}},
    }
    refused = api(aws.api_event("api-create-job.json", body=body, drop_headers=("Idempotency-Key",)))
    assert (
        refused["statusCode"] == 422
        and json.loads(refused["body"])["error"]["field"] == "webhook.auth.header"
    )
    response = api(
        aws.api_event(
            "api-create-job.json",
            body=body,
            drop_headers=("Idempotency-Key",),
            headers={"X-User-Token": "s3cret-user"},
        )
    )
    job_id = json.loads(response["body"])["id"]
    infer(aws.take_event("InferQueue"))
    notify(aws.take_event("NotifyQueue"))
    attempt_queued(aws, deliver)
    assert receiver.deliveries[0]["headers"]["x-user-token"] == "s3cret-user"
    assert_no_plaintext(aws, job_id, "s3cret")


def test_oauth2_token_is_cached_and_fetched_again_once_on_401(
    aws: AwsStack,
    notify: LoadedFunction,
    deliver: LoadedFunction,
    secret: str,
    finished_job: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    issued: list[str] = []
    revoked: set[str] = set()
    posts: list[str] = []

    def network(request: httpx.Request) -> httpx.Response:
        if request.headers["host"] == "auth.example.com":
            assert request.headers["authorization"] == "Basic " + base64.b64encode(b"cid:s3cret-cs").decode()
            assert b"grant_type=client_credentials" in request.content and b"scope=hooks" in request.content
            issued.append(f"tok{len(issued)}")
            return httpx.Response(200, json={"access_token": issued[-1], "expires_in": 3600})
        token = request.headers["authorization"].removeprefix("Bearer ")
        posts.append(token)
        return httpx.Response(401 if token in revoked else 204)

    patch_network(monkeypatch, network)
    oauth = {
        "type": "oauth2",
        "token_url": "https://auth.example.com/token",
        "client_id": "cid",
        "client_secret": "s3cret-cs",
        "scope": "hooks",
    }
    first_job, first = finished_job({"url": HOOK, "auth": oauth})
    _, second = finished_job({"url": HOOK, "auth": oauth})
    notify({"Records": first["Records"]})
    attempt_queued(aws, deliver)
    notify({"Records": second["Records"]})
    attempt_queued(aws, deliver)
    assert issued == ["tok0"] and posts == ["tok0", "tok0"]  # cached until it expires
    revoked.add("tok0")
    _, third = finished_job({"url": HOOK, "auth": oauth})
    notify({"Records": third["Records"]})
    attempt_queued(aws, deliver)
    assert issued == ["tok0", "tok1"] and posts[2:] == ["tok0", "tok1"]  # once again after a 401
    assert_no_plaintext(aws, first_job, "s3cret")


def test_oauth2_token_url_is_subject_to_the_egress_rule(
    aws: AwsStack,
    notify: LoadedFunction,
    deliver: LoadedFunction,
    receiver: Receiver,
    secret: str,
    finished_job: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    literal = {
        "type": "oauth2",
        "token_url": "http://169.254.169.254/token",
        "client_id": "c",
        "client_secret": "s",
    }
    api = aws.load("ApiFunction")
    body = {"input": {"prompt": "hi"}, "webhook": {"url": HOOK, "auth": literal}}
    refused = api(aws.api_event("api-create-job.json", body=body, drop_headers=("Idempotency-Key",)))
    assert refused["statusCode"] == 422
    assert json.loads(refused["body"])["error"]["field"] == "webhook.auth.token_url"
    # A name is checked when the token is fetched.
    by_name = {**literal, "token_url": "http://metadata.evil.example/token"}
    job_id, event = finished_job({"url": HOOK, "auth": by_name})
    notify(event)

    def resolve(host: str, port: int) -> list[Any]:
        address = "169.254.169.254" if host == "metadata.evil.example" else PUBLIC_ADDRESS
        return [baton.egress.ipaddress.ip_address(address)]

    monkeypatch.setattr(baton.egress, "resolve", resolve)
    attempt_queued(aws, deliver)
    assert receiver.deliveries == []
    [logged] = deliveries(aws, job_id)
    assert (logged["status"], logged["attempts"][0]["error"]) == ("failed", "blocked_address")


def test_a_body_over_20_kb_carries_the_result_by_url(
    aws: AwsStack,
    notify: LoadedFunction,
    deliver: LoadedFunction,
    receiver: Receiver,
    secret: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api, infer = aws.load("ApiFunction"), aws.load("InferFunction")
    text = "Long answer. " * 2000  # 26 KB: kept inline in the job (< 32 KB), too big for a webhook
    answer = Completion(text=text, finish_reason="stop", tool_calls=None, usage=Usage(total_tokens=5))
    monkeypatch.setattr(baton.llm, "complete", lambda *args, **kwargs: answer)
    body = {"input": {"prompt": "hi"}, "webhook": {"url": HOOK}}
    response = api(aws.api_event("api-create-job.json", body=body, drop_headers=("Idempotency-Key",)))
    job_id = json.loads(response["body"])["id"]
    infer(aws.take_event("InferQueue"))
    notify(aws.take_event("NotifyQueue"))
    attempt_queued(aws, deliver)
    [delivery] = receiver.deliveries
    assert len(delivery["body"].encode()) <= 20 * 1024
    payload = Webhook(secret).verify(delivery["body"], delivery["headers"])
    result = payload["data"]["result"]
    assert result["text"] == text[:1000] and result["finish_reason"] == "stop"
    key = baton.blobs.BlobStore.result_key("acme", job_id)
    assert key in result["result_url"] and "X-Amz-Signature" in result["result_url"]
    stored = json.loads(boto3.client("s3").get_object(Bucket=aws.bucket, Key=key)["Body"].read())
    assert stored["text"] == text
