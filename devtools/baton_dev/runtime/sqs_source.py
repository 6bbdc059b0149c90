"""An SQS event source mapping, run locally the way Lambda's poller runs it.

Honours what the template declares: batch size, batching window, maximum concurrency, the
function's timeout and ReportBatchItemFailures. Failed records are simply not deleted: they come
back after the queue's visibility timeout and, after maxReceiveCount, the queue's own redrive
policy moves them to the DLQ - exactly as on AWS.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import boto3

from baton_dev.runtime.functions import LocalFunction
from baton_dev.runtime.template import SqsSourceSpec

logger = logging.getLogger("baton.runtime")

# Lambda starts with a few pollers and scales up; locally a small default keeps moto responsive.
DEFAULT_CONCURRENCY = 4
# As Lambda's pollers do. A waiting receive costs moto nothing (it waits on a condition), while
# 1 s polls made about 40 empty receives a second across the pollers: a third of a core of moto's
# CPU on an idle stack, measured. A stop does not wait for a poll: what the poll brings in while
# this process still runs is released at once; what it takes after the process exited returns
# after its visibility timeout, as from any consumer that stops.
LONG_POLL_SECONDS = 20


def to_lambda_record(message: dict[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    """An SQS message as Lambda's SQS event source delivers it (camelCase, string attributes)."""
    attributes = {key: str(value) for key, value in message.get("Attributes", {}).items()}
    message_attributes = {
        name: {
            "stringValue": value.get("StringValue"),
            "binaryValue": value.get("BinaryValue"),
            "stringListValues": value.get("StringListValues", []),
            "binaryListValues": value.get("BinaryListValues", []),
            "dataType": value["DataType"],
        }
        for name, value in message.get("MessageAttributes", {}).items()
    }
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": attributes,
        "messageAttributes": message_attributes,
        "md5OfBody": message["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


class SqsEventSource:
    def __init__(
        self, spec: SqsSourceSpec, function: LocalFunction, *, queue_url: str, queue_arn: str, region: str
    ) -> None:
        self.spec = spec
        self.function = function
        self.queue_url = queue_url
        self.queue_arn = queue_arn
        self.region = region
        self.concurrency = spec.max_concurrency or DEFAULT_CONCURRENCY
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sqs = boto3.client("sqs")
        self.batches = 0
        self.records_ok = 0
        self.records_failed = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        if not self.spec.enabled:
            return
        for index in range(self.concurrency):
            thread = threading.Thread(
                target=self._poll_loop, name=f"{self.spec.logical_id}-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def signal_stop(self) -> None:
        self._stop.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Wait for the pollers at most `timeout` in all (not per poller: infer has eight)."""
        self.signal_stop()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            try:
                batch = self._receive_batch()
                if batch and self._stop.is_set():
                    self._release(batch)
                elif batch:
                    self._process(batch)
            except Exception:
                if self._stop.is_set():
                    return
                logger.exception("poller %s failed; retrying", self.spec.logical_id)
                self._stop.wait(1.0)

    def _release(self, batch: list[dict[str, Any]]) -> None:
        """Messages a long poll brought in after the stop: visible again at once, not after the
        visibility timeout, for whoever polls next (this runtime restarted, say)."""
        self._sqs.change_message_visibility_batch(
            QueueUrl=self.queue_url,
            Entries=[
                {"Id": str(index), "ReceiptHandle": message["ReceiptHandle"], "VisibilityTimeout": 0}
                for index, message in enumerate(batch)
            ],
        )

    def _receive_batch(self) -> list[dict[str, Any]]:
        """Up to BatchSize messages, waiting at most the batching window once the first arrives."""
        batch: list[dict[str, Any]] = []
        window_ends: float | None = None
        while len(batch) < self.spec.batch_size and not self._stop.is_set():
            wait = LONG_POLL_SECONDS
            if window_ends is not None:
                remaining = window_ends - time.monotonic()
                if remaining <= 0:
                    break
                wait = max(0, min(wait, int(remaining)))
            answer = self._sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=min(10, self.spec.batch_size - len(batch)),
                WaitTimeSeconds=wait,
                MessageSystemAttributeNames=["All"],
                MessageAttributeNames=["All"],
            )
            messages: list[dict[str, Any]] = answer.get("Messages", [])  # type: ignore[assignment]
            batch.extend(messages)
            if not batch:
                continue
            if self.spec.batching_window_s <= 0:
                break
            if window_ends is None:
                window_ends = time.monotonic() + self.spec.batching_window_s
            if not messages:
                break
        return batch

    def _process(self, batch: list[dict[str, Any]]) -> None:
        event = {"Records": [to_lambda_record(message, self.queue_arn, self.region) for message in batch]}
        outcome = self.function.invoke(event)
        failed_ids: set[str]
        if not outcome.ok:
            failed_ids = {message["MessageId"] for message in batch}
        elif self.spec.report_batch_item_failures and isinstance(outcome.result, dict):
            failures = outcome.result.get("batchItemFailures") or []
            failed_ids = {str(item.get("itemIdentifier")) for item in failures}
        else:
            failed_ids = set()
        done = [message for message in batch if message["MessageId"] not in failed_ids]
        if done:
            self._sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(index), "ReceiptHandle": message["ReceiptHandle"]}
                    for index, message in enumerate(done)
                ],
            )
        with self._lock:
            self.batches += 1
            self.records_ok += len(done)
            self.records_failed += len(batch) - len(done)
        if failed_ids:
            logger.info(
                "%s: %d of %d records failed; they return after the visibility timeout",
                self.spec.logical_id,
                len(failed_ids),
                len(batch),
            )
