"""Failure taxonomy and SQS-native retries.

Every failure a stage meets is one of:
- permanent (invalid request, unreadable document, context too long, schema mismatch): the job
  fails at once with a clear `error.type`, no retries burnt;
- retryable (429, 5xx, timeouts, connection errors, AWS throttling): the record is reported as a
  batch item failure and its visibility is set to an exponential backoff with full jitter (at least
  the provider's Retry-After); after `max_attempts` the job fails with `error.retryable: true`;
- unknown (a crash): the record fails with the same backoff and is left to the queue's redrive
  policy, so a poison message ends in the stage's DLQ, where the sweeper fails its job.
A permanent failure in a stage with no job to end (e.g. an upload for a tenant that does not
exist) is logged once, counted (metric `PermanentFailuresDropped`) and dropped: retrying it would
only fill the DLQ and fire its alarm.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyAlreadyInProgressError
from aws_lambda_powertools.utilities.parser.models import SqsRecordModel
from botocore.exceptions import ClientError, ConnectionError, HTTPClientError
from pydantic import ValidationError

from baton.aws import client
from baton.errors import BatonError, StaleWriteError
from baton.settings import Settings

logger = Logger(child=True)
# Powertools Metrics instances share one metric set; the handler's @log_metrics flushes it.
metrics = Metrics()

MAX_VISIBILITY_SECONDS = 43_200  # SQS's ceiling
_AWS_RETRYABLE_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "SlowDown",
        "ServiceUnavailable",
        "InternalServerError",
        "InternalFailure",
        "TransactionConflictException",
    }
)


@dataclass(frozen=True)
class Failure:
    retryable: bool | None  # None: unknown, treated as a crash
    type: str
    message: str
    retry_after: float | None = None


def classify(error: BaseException) -> Failure:
    if isinstance(error, BatonError):
        retry_after = getattr(error, "retry_after", None)
        return Failure(error.retryable, error.type, error.message, retry_after)
    if isinstance(error, IdempotencyAlreadyInProgressError):
        return Failure(True, "in_progress", "another invocation is working on this step")
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _AWS_RETRYABLE_CODES or status >= 500:
            return Failure(True, "aws_unavailable", f"AWS answered {code or status}")
        return Failure(None, "aws_error", f"AWS answered {code or status}")
    if isinstance(error, ConnectionError | HTTPClientError):
        return Failure(True, "aws_unavailable", f"cannot reach AWS: {type(error).__name__}")
    if isinstance(error, ValidationError):
        return Failure(
            False, "schema_mismatch", f"message does not match its schema: {error.error_count()} errors"
        )
    return Failure(None, "crash", f"{type(error).__name__}: {str(error)[:300]}")


def backoff_seconds(attempt: int, *, base: float, cap: float, retry_after: float | None = None) -> int:
    """Full jitter (AWS Architecture Blog): uniform(0, min(cap, base * 2^(attempt-1))), but never
    sooner than the provider's Retry-After."""
    ceiling = min(cap, base * 2 ** max(0, attempt - 1))
    delay = random.uniform(0, ceiling)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(MAX_VISIBILITY_SECONDS, math.ceil(delay))


@cache
def queue_url_of(queue_arn: str) -> str:
    """A queue's URL from its ARN (`arn:PARTITION:sqs:REGION:ACCOUNT:NAME`), with no AWS call and
    so no sqs:GetQueueUrl permission: the SQS endpoint the client talks to, then /ACCOUNT/NAME."""
    _, _, _, _, account, name = queue_arn.split(":", 5)
    endpoint = str(client("sqs").meta.endpoint_url).rstrip("/")
    return f"{endpoint}/{account}/{name}"


def delay_redelivery(record: SqsRecordModel, seconds: int) -> None:
    """The SQS-native backoff: the failed record reappears after `seconds`, not after the full
    visibility timeout."""
    client("sqs").change_message_visibility(
        QueueUrl=queue_url_of(record.eventSourceARN),
        ReceiptHandle=record.receiptHandle,
        VisibilityTimeout=seconds,
    )


def attempt_of(record: SqsRecordModel) -> int:
    return int(record.attributes.ApproximateReceiveCount)


@dataclass
class RetryPolicy:
    max_attempts: int
    base_seconds: float
    cap_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(settings.max_attempts, settings.retry_base_seconds, settings.retry_cap_seconds)

    def run(
        self,
        record: SqsRecordModel,
        work: Callable[[], dict[str, Any]],
        *,
        stage: str,
        give_up: Callable[[Failure, int], None] | None,
    ) -> dict[str, Any]:
        """Run one record's work under the taxonomy. `give_up(failure, attempt)` ends the job
        (None: this stage never fails jobs, e.g. notify, whose job is already terminal)."""
        attempt = attempt_of(record)
        try:
            return work()
        except StaleWriteError as error:
            logger.info("stale work dropped", extra={"stage": stage, "reason": str(error)})
            return {"outcome": "stale"}
        except Exception as error:
            failure = classify(error)
            context = {
                "stage": stage,
                "attempt": attempt,
                "error_type": failure.type,
                "reason": failure.message,
            }
            if failure.retryable is False and give_up is not None:
                logger.warning("permanent failure", extra=context)
                give_up(failure, attempt)
                return {"outcome": "failed", "error": failure.type}
            if failure.retryable is False:
                logger.error("permanent failure with no job to end: dropped", extra=context)
                metrics.add_metric(name="PermanentFailuresDropped", unit=MetricUnit.Count, value=1)
                return {"outcome": "dropped", "error": failure.type}
            exhausted = attempt >= self.max_attempts and failure.type != "in_progress"
            if failure.retryable and exhausted and give_up is not None:
                logger.warning("retries exhausted", extra=context)
                give_up(failure, attempt)
                return {"outcome": "failed", "error": failure.type}
            if failure.type == "in_progress":
                # Another invocation holds this step (or died holding it: its record expires with
                # that invocation's timeout). Not an attempt of ours: look again later, never give up.
                delay = math.ceil(self.cap_seconds)
            else:
                delay = backoff_seconds(
                    attempt, base=self.base_seconds, cap=self.cap_seconds, retry_after=failure.retry_after
                )
            try:
                delay_redelivery(record, delay)
            except Exception as backoff_error:
                # Never silent: on AWS this is typically a missing IAM statement, and the record then
                # waits the whole visibility timeout (minutes) instead of `delay` seconds.
                metrics.add_metric(name="RetryBackoffFailed", unit=MetricUnit.Count, value=1)
                logger.exception(
                    "could not set the retry backoff; the queue's visibility timeout applies instead",
                    extra={**context, "retry_in_s": delay, "backoff_error": classify(backoff_error).message},
                )
            level = logger.warning if failure.retryable else logger.error
            level("step failed; SQS will redeliver", extra={**context, "retry_in_s": delay})
            raise
