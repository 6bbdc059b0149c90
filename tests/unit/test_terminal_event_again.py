"""A job's terminal event survives the invocation that ended the job dying before publishing it."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

import baton.llm
from baton.llm import Completion
from baton.messaging import EventPublisher
from baton.models import EventType
from baton.records import JobRecord, Usage
from baton.settings import Settings
from baton.store import JobStore

if TYPE_CHECKING:
    from conftest import AwsStack, LoadedFunction

ANSWER = Completion(
    text="Done.", finish_reason="stop", tool_calls=None, usage=Usage(prompt_tokens=3, completion_tokens=1)
)


@pytest.fixture
def model_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def complete(settings: Settings, **request: Any) -> Completion:
        calls.append(request)
        return ANSWER

    monkeypatch.setattr(baton.llm, "complete", complete)
    return calls


def _accept(aws: AwsStack, api: LoadedFunction) -> str:
    body = {"input": {"prompt": "Summarize the incident."}}
    response = api(aws.api_event("api-create-job.json", body=body, drop_headers=("Idempotency-Key",)))
    assert response["statusCode"] == 202, response["body"]
    return str(json.loads(response["body"])["id"])


def _terminal_events(aws: AwsStack) -> list[str]:
    return [json.loads(message["Body"])["detail-type"] for message in aws.receive("NotifyQueue")]


def test_a_terminal_event_refused_after_the_terminal_write_is_published_by_the_redelivery(
    aws: AwsStack,
    api: LoadedFunction,
    infer: LoadedFunction,
    model_calls: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job_id = _accept(aws, api)
    event = aws.take_event("InferQueue")
    publish = EventPublisher.publish
    refused: list[str] = []

    def refuse_once(self: EventPublisher, event_type: EventType, record: JobRecord, **extra: Any) -> None:
        if event_type is EventType.COMPLETED and not refused:
            refused.append(record.job_id)  # as publish() raises when PutEvents reports a failed entry
            raise RuntimeError("EventBridge refused Job Completed")
        publish(self, event_type, record, **extra)

    monkeypatch.setattr(EventPublisher, "publish", refuse_once)
    with pytest.raises(Exception, match="All records failed processing"):
        infer(event)  # the job is completed in the table, its event was not published
    assert JobStore(aws.jobs_table).get("acme", job_id).status.value == "completed"
    assert _terminal_events(aws) == []

    # SQS redelivers the command: the step does not run again, but its event goes out.
    assert infer(event) == {"batchItemFailures": []}
    assert refused == [job_id]
    assert _terminal_events(aws) == ["Job Completed"]
    assert len(model_calls) == 1


def test_a_duplicate_of_a_finished_step_publishes_nothing_again(
    aws: AwsStack, api: LoadedFunction, infer: LoadedFunction, model_calls: list[dict[str, Any]]
) -> None:
    _accept(aws, api)
    event = aws.take_event("InferQueue")
    assert infer(event) == {"batchItemFailures": []}
    assert _terminal_events(aws) == ["Job Completed"]

    duplicate = {"Records": [dict(event["Records"][0], messageId="duplicate-delivery")]}
    assert infer(duplicate) == {"batchItemFailures": []}  # its idempotency record answers
    assert _terminal_events(aws) == []
    assert len(model_calls) == 1
