"""Stages with no job to end (ingest, notify): which failures are retried and which are dropped."""

from __future__ import annotations

from typing import Any

import pytest
from aws_lambda_powertools.utilities.parser.models import SqsRecordModel

import baton.retries
from baton.errors import InvalidRequestError, ModelError
from baton.retries import RetryPolicy

from .conftest import sqs_record


@pytest.fixture
def redeliveries(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    delays: list[int] = []
    monkeypatch.setattr(baton.retries, "delay_redelivery", lambda _record, seconds: delays.append(seconds))
    return delays


def run(error: Exception, attempt: int = 1) -> dict[str, Any]:
    record = sqs_record('{"upload": "uploads/nobody/a.pdf"}')
    record["attributes"]["ApproximateReceiveCount"] = str(attempt)

    def work() -> dict[str, Any]:
        raise error

    policy = RetryPolicy(max_attempts=5, base_seconds=2, cap_seconds=300)
    return policy.run(SqsRecordModel.model_validate(record), work, stage="ingest", give_up=None)


def test_a_permanent_failure_is_dropped_on_its_first_delivery(redeliveries: list[int]) -> None:
    assert run(InvalidRequestError("tenant 'nobody' does not exist")) == {
        "outcome": "dropped",
        "error": "invalid_request",
    }
    assert redeliveries == []  # no backoff set: the record is consumed, never redelivered


@pytest.mark.parametrize(
    "error",
    [ModelError("503", retryable=True), RuntimeError("a crash: left to the redrive policy and the DLQ")],
)
def test_retryable_failures_and_crashes_are_still_redelivered(
    redeliveries: list[int], error: Exception
) -> None:
    with pytest.raises(type(error)):
        run(error, attempt=7)  # with no job to end, nothing gives up: SQS's redrive policy decides
    assert len(redeliveries) == 1
