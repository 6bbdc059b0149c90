"""The infer stage (functions/infer) with baton.llm.complete replaced by a fake model."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import boto3
import httpx
import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

import baton.execution
import baton.llm
from baton.clock import now_ms
from baton.errors import ModelError
from baton.llm import Completion
from baton.records import Usage
from baton.settings import Settings
from baton.store import JobStore

if TYPE_CHECKING:
    from conftest import AwsStack, LoadedFunction

ANSWER = Completion(
    text="The outage lasted 47 minutes.",
    finish_reason="stop",
    tool_calls=None,
    usage=Usage(prompt_tokens=12, completion_tokens=7, total_tokens=19),
)


@dataclass
class FakeModel:
    """Stands in for baton.llm.complete: records each call, answers or raises (per job if told)."""

    answer: Completion | Exception = field(default_factory=lambda: ANSWER)
    answers_for_job: dict[str, Completion | Exception] = field(default_factory=dict)
    calls: list[dict[str, Any]] = field(default_factory=list)
    during_call: Callable[[], None] | None = None

    def __call__(self, settings: Settings, **request: Any) -> Completion:
        self.calls.append(request)
        if self.during_call is not None:
            self.during_call()
        answer = self.answers_for_job.get(request["extra_headers"]["X-Baton-Job-Id"], self.answer)
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def model(monkeypatch: pytest.MonkeyPatch) -> FakeModel:
    fake = FakeModel()
    monkeypatch.setattr(baton.llm, "complete", fake)
    return fake


def accept(aws: AwsStack, api: LoadedFunction, body: dict[str, Any] | None = None) -> str:
    body = body or {
        "input": {"prompt": "Summarize the incident."},
        "parameters": {"temperature": 0.2, "max_tokens": 256},
        "metadata": {"ticket": "OPS-1187"},
    }
    response = api(aws.api_event("api-create-job.json", body=body, drop_headers=("Idempotency-Key",)))
    assert response["statusCode"] == 202, response["body"]
    return str(json.loads(response["body"])["id"])


def terminal_events(aws: AwsStack) -> list[dict[str, Any]]:
    """What the template's TerminalEventsRule delivered to the notify stage's queue."""
    return [json.loads(message["Body"]) for message in aws.receive("NotifyQueue")]


def idempotency_records(aws: AwsStack) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = boto3.client("dynamodb").scan(TableName=aws.idempotency_table)["Items"]
    return items


def test_completion_is_recorded(
    aws: AwsStack, api: LoadedFunction, infer: LoadedFunction, model: FakeModel
) -> None:
    job_id = accept(aws, api)
    assert infer(aws.take_event("InferQueue")) == {"batchItemFailures": []}

    [call] = model.calls
    assert call["model"] == "baton-local"
    assert call["messages"] == [{"role": "user", "content": "Summarize the incident."}]
    assert call["parameters"]["temperature"] == 0.2 and call["parameters"]["max_tokens"] == 256
    assert 0 < call["timeout"] <= 120
    assert call["extra_headers"]["X-Baton-Job-Id"] == job_id

    record = JobStore(aws.jobs_table).get("acme", job_id)
    assert record.status.value == "completed"
    assert record.progress == 100
    assert record.result is not None and record.result.text == "The outage lasted 47 minutes."
    assert record.result.finish_reason == "stop"
    assert record.usage == Usage(prompt_tokens=12, completion_tokens=7, total_tokens=19)
    timings = record.timings
    assert timings.queued_ms is not None and timings.infer_ms is not None and timings.total_ms is not None
    assert timings.total_ms >= timings.infer_ms >= 0

    [event] = terminal_events(aws)
    assert event["detail-type"] == "Job Completed"
    assert event["detail"]["metadata"] == {"ticket": "OPS-1187"}
    view = event["detail"]["job"]
    assert view["status"] == "completed"
    assert view["result"] == {"text": "The outage lasted 47 minutes.", "finish_reason": "stop"}
    assert view["usage"]["total_tokens"] == 19


def test_chat_messages_are_passed_through(
    aws: AwsStack, api: LoadedFunction, infer: LoadedFunction, model: FakeModel
) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    accept(aws, api, {"input": {"messages": messages}, "model": "gpt-4.1-mini"})
    infer(aws.take_event("InferQueue"))
    assert model.calls[0]["messages"] == messages
    assert model.calls[0]["model"] == "gpt-4.1-mini"


def test_extracted_document_text_reaches_the_model(
    aws: AwsStack, api: LoadedFunction, infer: LoadedFunction, model: FakeModel
) -> None:
    extract = aws.load("ExtractFunction")
    boto3.client("s3").put_object(
        Bucket=aws.bucket, Key="documents/acme/notes.txt", Body=b"Revenue grew 12%.", ContentType="text/plain"
    )
    job_id = accept(aws, api, {"input": {"prompt": "Summarize"}, "document": {"id": "notes.txt"}})
    assert extract(aws.take_event("ExtractQueue")) == {"batchItemFailures": []}
    assert infer(aws.take_event("InferQueue")) == {"batchItemFailures": []}
    content = model.calls[0]["messages"][-1]["content"]
    assert content.startswith("Summarize") and "Revenue grew 12%." in content
    record = JobStore(aws.jobs_table).get("acme", job_id)
    assert record.status.value == "completed"
    assert record.timings.extract_ms is not None and record.timings.infer_ms is not None


def test_non_retryable_model_error_fails_the_job(
    aws: AwsStack, api: LoadedFunction, infer: LoadedFunction, model: FakeModel
) -> None:
    model.answer = ModelError("unknown model 'nope'", retryable=False, type_="invalid_model")
    job_id = accept(aws, api)
    assert infer(aws.take_event("InferQueue")) == {"batchItemFailures": []}
    record = JobStore(aws.jobs_table).get("acme", job_id)
    assert record.status.value == "failed"
    assert record.error is not None
    assert (record.error.type, record.error.retryable) == ("invalid_model", False)
    assert record.result is None
    [event] = terminal_events(aws)
    assert event["detail-type"] == "Job Failed"
    assert event["detail"]["job"]["error"]["type"] == "invalid_model"


def test_retryable_model_error_is_a_batch_item_failure(
    aws: AwsStack, api: LoadedFunction, infer: LoadedFunction, model: FakeModel
) -> None:
    failing, working = accept(aws, api), accept(aws, api)
    model.answers_for_job[failing] = ModelError("overloaded", retryable=True, type_="model_unavailable")
    event = aws.take_event("InferQueue")
    assert len(event["Records"]) == 2
    message_of = {json.loads(r["body"])["job_id"]: r["messageId"] for r in event["Records"]}

    assert infer(event) == {"batchItemFailures": [{"itemIdentifier": message_of[failing]}]}
    store = JobStore(aws.jobs_table)
    record = store.get("acme", failing)
    assert not record.is_terminal and record.error is None
    assert store.get("acme", working).status.value == "completed"
    assert [e["detail"]["job_id"] for e in terminal_events(aws)] == [working]


def test_a_429_defers_the_command_without_spending_an_attempt(
    aws: AwsStack, api: LoadedFunction, infer: LoadedFunction, model: FakeModel
) -> None:
    """A 429 is the provider asking to wait: the record succeeds, a copy of its command goes back
    to the queue delayed by the Retry-After, the job stays open, and no idempotency record is
    kept (the copy calls the model again)."""
    job_id = accept(aws, api)
    model.answer = ModelError(
        "rate limited", retryable=True, type_="rate_limited", retry_after=3.0, headers={"retry-after": "3"}
    )
    event = aws.take_event("InferQueue")
    for attempt in range(1, 4):
        event["Records"][0]["attributes"]["ApproximateReceiveCount"] = str(attempt * 10)  # past MaxAttempts
        before_ms = now_ms()
        assert infer(event) == {"batchItemFailures": []}
        assert not JobStore(aws.jobs_table).get("acme", job_id).is_terminal
        # Every caller waits for the provider: the limiter is blocked for the Retry-After...
        assert provider_item(aws)["blocked_until"] >= before_ms + 3000
        # ... and this job's last message is not retried, and not held: it waits as a delayed copy.
        assert delayed_messages(aws, "InferQueue") == attempt
        # Lift the block, so the next delivery calls (and meets another 429).
        boto3.client("dynamodb").update_item(
            TableName=aws.limiter_table,
            Key={"pk": {"S": provider_item(aws)["pk"]}},
            UpdateExpression="SET blocked_until = :zero, request_tat = :zero",
            ExpressionAttributeValues={":zero": {"N": "0"}},
        )
    assert len(model.calls) == 3
    assert idempotency_records(aws) == []

    # Blocked: the next command is deferred by the limiter, without a model call.
    model.answer = ANSWER
    boto3.client("dynamodb").update_item(
        TableName=aws.limiter_table,
        Key={"pk": {"S": provider_item(aws)["pk"]}},
        UpdateExpression="SET blocked_until = :later, request_tat = :later",
        ExpressionAttributeValues={":later": {"N": str(now_ms() + 60_000)}},
    )
    assert infer(event) == {"batchItemFailures": []}
    assert len(model.calls) == 3 and delayed_messages(aws, "InferQueue") == 4
    assert not JobStore(aws.jobs_table).get("acme", job_id).is_terminal


def provider_item(aws: AwsStack) -> dict[str, Any]:
    items = boto3.client("dynamodb").scan(TableName=aws.limiter_table)["Items"]
    [item] = [i for i in items if i["pk"]["S"].startswith("provider#")]
    return {name: (int(value["N"]) if "N" in value else value.get("S")) for name, value in item.items()}


def delayed_messages(aws: AwsStack, queue: str) -> int:
    """Messages re-sent to the queue: still delayed, or (their delay over) visible."""
    attributes = boto3.client("sqs").get_queue_attributes(
        QueueUrl=aws.queue_url(queue),
        AttributeNames=["ApproximateNumberOfMessagesDelayed", "ApproximateNumberOfMessages"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessagesDelayed"]) + int(
        attributes["ApproximateNumberOfMessages"]
    )


def test_retryable_model_error_returns_the_command_to_the_queue_then_succeeds(
    aws: AwsStack, api: LoadedFunction, infer: LoadedFunction, model: FakeModel
) -> None:
    model.answer = ModelError("the model endpoint failed (503)", retryable=True, type_="model_unavailable")
    job_id = accept(aws, api)
    event = aws.take_event("InferQueue")
    # When every record of a batch fails, Powertools fails the invocation and SQS makes the
    # message visible again after the visibility timeout.
    with pytest.raises(BatchProcessingError):
        infer(event)
    assert not JobStore(aws.jobs_table).get("acme", job_id).is_terminal
    assert terminal_events(aws) == []

    # The redelivered message (the idempotency record was released) reaches a recovered model.
    model.answer = ANSWER
    assert infer(event) == {"batchItemFailures": []}
    assert len(model.calls) == 2
    assert JobStore(aws.jobs_table).get("acme", job_id).status.value == "completed"


def test_a_batch_calls_the_model_concurrently(
    aws: AwsStack, api: LoadedFunction, infer: LoadedFunction, model: FakeModel
) -> None:
    """The records of one batch wait on the model together: each call waits (30 s at most) until
    all three are in flight, which a serial batch never reaches (its first call would fail)."""
    jobs = [accept(aws, api) for _ in range(3)]
    all_in_flight = threading.Barrier(3, timeout=30)

    def wait_for_the_others() -> None:
        all_in_flight.wait()

    model.during_call = wait_for_the_others
    event = aws.take_event("InferQueue")
    assert len(event["Records"]) == 3
    assert infer(event) == {"batchItemFailures": []}
    store = JobStore(aws.jobs_table)
    assert [store.get("acme", job_id).status.value for job_id in jobs] == ["completed"] * 3
    assert len(model.calls) == 3
    assert sorted(e["detail"]["job_id"] for e in terminal_events(aws)) == sorted(jobs)


def test_a_duplicate_in_the_same_batch_calls_the_model_once(
    aws: AwsStack, api: LoadedFunction, infer: LoadedFunction, model: FakeModel
) -> None:
    """SQS may deliver one message twice in one batch: the copies take turns, and the second finds
    the first's idempotency record instead of racing it to the model."""
    job_id = accept(aws, api)
    event = aws.take_event("InferQueue")
    event["Records"].append(dict(event["Records"][0], messageId="duplicate-delivery"))
    assert infer(event) == {"batchItemFailures": []}
    assert len(model.calls) == 1
    assert JobStore(aws.jobs_table).get("acme", job_id).status.value == "completed"
    assert len(terminal_events(aws)) == 1


def test_a_concurrent_batch_fails_only_its_failing_record(
    aws: AwsStack, api: LoadedFunction, infer: LoadedFunction, model: FakeModel
) -> None:
    """Each record of a concurrent batch has its own outcome: a permanent error fails its job, a
    retryable one returns only its message, the others complete."""
    broken, flaky, fine = accept(aws, api), accept(aws, api), accept(aws, api)
    model.answers_for_job[broken] = ModelError("unknown model", retryable=False, type_="invalid_model")
    model.answers_for_job[flaky] = ModelError("overloaded", retryable=True, type_="model_unavailable")
    event = aws.take_event("InferQueue")
    message_of = {json.loads(r["body"])["job_id"]: r["messageId"] for r in event["Records"]}
    assert infer(event) == {"batchItemFailures": [{"itemIdentifier": message_of[flaky]}]}
    store = JobStore(aws.jobs_table)
    assert store.get("acme", broken).status.value == "failed"
    assert not store.get("acme", flaky).is_terminal
    assert store.get("acme", fine).status.value == "completed"


def test_redelivered_command_calls_the_model_once(
    aws: AwsStack, api: LoadedFunction, infer: LoadedFunction, model: FakeModel
) -> None:
    """At-least-once delivery: a duplicate arriving on another instance while the first call is
    still running is refused for later, and after it finishes gets the stored outcome."""
    job_id = accept(aws, api)
    event = aws.take_event("InferQueue")
    duplicate = {"Records": [dict(event["Records"][0], messageId="duplicate-delivery")]}
    other_instance = aws.load("InferFunction")
    refusals: list[str] = []

    def duplicate_arrives() -> None:
        with pytest.raises(BatchProcessingError) as refused:  # retried later by SQS
            other_instance(duplicate)
        refusals.append(str(refused.value))

    model.during_call = duplicate_arrives
    assert infer(event) == {"batchItemFailures": []}
    assert len(refusals) == 1 and "IdempotencyAlreadyInProgressError" in refusals[0]
    assert other_instance(duplicate) == {"batchItemFailures": []}
    assert infer(event) == {"batchItemFailures": []}
    assert len(model.calls) == 1
    assert JobStore(aws.jobs_table).get("acme", job_id).status.value == "completed"
    assert [item["status"]["S"] for item in idempotency_records(aws)] == ["COMPLETED"]
    assert len(terminal_events(aws)) == 1


def test_command_for_another_version_is_dropped(
    aws: AwsStack, api: LoadedFunction, infer: LoadedFunction, model: FakeModel
) -> None:
    job_id = accept(aws, api)
    event = aws.take_event("InferQueue")
    command = json.loads(event["Records"][0]["body"])
    stale = {"Records": [aws.sqs_record(json.dumps({**command, "version": command["version"] + 1}))]}
    before = JobStore(aws.jobs_table).get("acme", job_id)
    assert infer(stale) == {"batchItemFailures": []}
    assert model.calls == []
    assert JobStore(aws.jobs_table).get("acme", job_id) == before


def test_command_for_a_cancelled_job_is_dropped(
    aws: AwsStack, api: LoadedFunction, infer: LoadedFunction, model: FakeModel
) -> None:
    job_id = accept(aws, api)
    api(aws.api_event("api-cancel-job.json", job_id=job_id))
    assert infer(aws.take_event("InferQueue")) == {"batchItemFailures": []}
    assert model.calls == []
    assert JobStore(aws.jobs_table).get("acme", job_id).status.value == "cancelled"


def test_result_arriving_after_cancellation_is_discarded(
    aws: AwsStack, api: LoadedFunction, infer: LoadedFunction, model: FakeModel
) -> None:
    job_id = accept(aws, api)
    model.during_call = lambda: api(aws.api_event("api-cancel-job.json", job_id=job_id))
    assert infer(aws.take_event("InferQueue")) == {"batchItemFailures": []}
    record = JobStore(aws.jobs_table).get("acme", job_id)
    assert record.status.value == "cancelled"
    assert record.result is None
    assert [event["detail-type"] for event in terminal_events(aws)] == ["Job Cancelled"]


def test_job_past_its_timeout_fails_without_a_model_call(
    aws: AwsStack,
    api: LoadedFunction,
    infer: LoadedFunction,
    model: FakeModel,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job_id = accept(aws, api, {"input": {"prompt": "hi"}, "parameters": {"timeout_seconds": 1}})
    later = baton.execution.now_ms() + 2_000
    monkeypatch.setattr(baton.execution, "now_ms", lambda: later)
    assert infer(aws.take_event("InferQueue")) == {"batchItemFailures": []}
    assert model.calls == []
    record = JobStore(aws.jobs_table).get("acme", job_id)
    assert record.error is not None and record.error.type == "timeout"


def test_large_result_is_stored_in_s3(
    aws: AwsStack, api: LoadedFunction, infer: LoadedFunction, model: FakeModel
) -> None:
    limit = Settings().inline_result_max_bytes
    text = "All systems nominal. " * (limit // 10)
    model.answer = Completion(text=text, finish_reason="length", tool_calls=None, usage=Usage(total_tokens=9))
    job_id = accept(aws, api)
    assert infer(aws.take_event("InferQueue")) == {"batchItemFailures": []}

    record = JobStore(aws.jobs_table).get("acme", job_id)
    assert record.result is not None
    assert record.result.result_key == f"results/acme/{job_id}.json"
    assert record.result.text is not None and text.startswith(record.result.text)
    assert len(record.result.text) <= 1000
    stored = boto3.client("s3").get_object(Bucket=aws.bucket, Key=record.result.result_key)
    assert json.loads(stored["Body"].read())["text"] == text
    assert record.result.result_bytes == stored["ContentLength"] > limit

    response = api(aws.api_event("api-get-job.json", job_id=job_id))
    result = json.loads(response["body"])["result"]
    assert result["finish_reason"] == "length"
    url = httpx.URL(result["result_url"])
    assert url.path.endswith(f"/results/acme/{job_id}.json")
    # S3 refuses SigV2 on buckets created since June 2020; botocore presigns with SigV2 in
    # us-east-1 unless told otherwise.
    assert url.params.get("X-Amz-Algorithm") == "AWS4-HMAC-SHA256"
    assert "X-Amz-Signature" in url.params
    assert int(url.params["X-Amz-Expires"]) == Settings().result_url_expiry_seconds


def test_small_result_stays_inline(
    aws: AwsStack, api: LoadedFunction, infer: LoadedFunction, model: FakeModel
) -> None:
    job_id = accept(aws, api)
    infer(aws.take_event("InferQueue"))
    record = JobStore(aws.jobs_table).get("acme", job_id)
    assert record.result is not None and record.result.result_key is None
    assert boto3.client("s3").list_objects_v2(Bucket=aws.bucket, Prefix="results/").get("KeyCount") == 0
