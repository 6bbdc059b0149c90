"""The sweeper (deadlines) and the retry policy, on the template's data plane in moto."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

import baton.llm
from baton.errors import ModelError, UnreadableDocumentError
from baton.retries import Failure, backoff_seconds, classify
from baton.store import JobStore

if TYPE_CHECKING:
    from conftest import AwsStack, LoadedFunction


def accept(aws: AwsStack, api: LoadedFunction, **body: Any) -> str:
    event = aws.api_event(
        "api-create-job.json",
        body={"input": {"prompt": "Summarize."}, **body},
        drop_headers=("Idempotency-Key",),
    )
    response = api(event)
    assert response["statusCode"] == 202, response["body"]
    return str(json.loads(response["body"])["id"])


def status_of(aws: AwsStack, job_id: str) -> dict[str, Any]:
    record = JobStore(aws.jobs_table).get("acme", job_id)
    return {"status": record.status.value, "error": record.error.model_dump() if record.error else None}


def test_an_overdue_job_fails_as_timeout(
    aws: AwsStack, api: LoadedFunction, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = accept(aws, api, parameters={"timeout_seconds": 60})
    sweeper = aws.load("SweeperFunction")
    assert sweeper(_scheduled_event())["overdue_failed"] == 0  # not yet overdue

    later = JobStore(aws.jobs_table).get("acme", job_id).deadline_ms + 1
    monkeypatch.setattr("baton.sweeper.now_ms", lambda: later)
    assert sweeper(_scheduled_event())["overdue_failed"] == 1
    assert status_of(aws, job_id)["error"]["type"] == "timeout"
    # Terminal jobs leave the sparse open-jobs index: the next sweep has nothing to do.
    assert list(JobStore(aws.jobs_table).overdue(later, limit=100)) == []


def test_retryable_failures_back_off_then_give_up_as_retryable(
    aws: AwsStack, api: LoadedFunction, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unavailable(*_: Any, **__: Any) -> Any:
        raise ModelError(
            "the model endpoint failed (503)", retryable=True, type_="model_unavailable", retry_after=7
        )

    monkeypatch.setattr(baton.llm, "complete", unavailable)
    job_id = accept(aws, api)
    infer = aws.load("InferFunction", BATON_MAX_ATTEMPTS="2")
    [message] = aws.receive("InferQueue")
    record = aws._record("InferQueue", message)
    record["attributes"]["ApproximateReceiveCount"] = "1"
    with pytest.raises(Exception, match="All records failed"):
        infer({"Records": [record]})
    assert status_of(aws, job_id)["status"] == "processing"  # will be retried
    # Retry-After (7 s) sets the record's visibility: it is not receivable right away.
    assert aws.receive("InferQueue") == []

    record["attributes"]["ApproximateReceiveCount"] = "2"
    assert infer({"Records": [record]}) == {"batchItemFailures": []}  # consumed: the job ended
    state = status_of(aws, job_id)
    assert state["status"] == "failed"
    assert state["error"]["retryable"] is True
    assert "gave up after 2 attempts" in state["error"]["message"]


def test_classification() -> None:
    assert classify(ModelError("x", retryable=True, retry_after=3)) == Failure(True, "model_error", "x", 3)
    assert classify(UnreadableDocumentError("empty")).retryable is False
    assert classify(RuntimeError("boom")).retryable is None  # a crash: left to the redrive policy


@pytest.mark.parametrize("attempt", [1, 2, 5, 12])
def test_backoff_is_full_jitter_capped_and_honours_retry_after(attempt: int) -> None:
    delays = [backoff_seconds(attempt, base=2, cap=60) for _ in range(200)]
    assert min(delays) >= 0 and max(delays) <= min(60, 2 * 2 ** (attempt - 1))
    assert all(backoff_seconds(attempt, base=2, cap=60, retry_after=30) >= 30 for _ in range(50))


def _scheduled_event() -> dict[str, Any]:
    return {
        "version": "0",
        "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": "2026-11-22T00:00:00Z",
        "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/SweeperFunctionSweep"],
        "detail": {},
    }
