"""Commands between stages go on SQS; facts (lifecycle events) go on the EventBridge bus."""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools import Logger

from baton.aws import client
from baton.models import EVENT_SOURCE, EventType, LifecycleDetail, StageCommand
from baton.records import JobRecord

logger = Logger(child=True)


class CommandQueue:
    def __init__(self, queue_url: str) -> None:
        self.queue_url = queue_url

    def send(self, command: StageCommand, *, delay_seconds: int = 0) -> None:
        client("sqs").send_message(
            QueueUrl=self.queue_url,
            MessageBody=command.model_dump_json(exclude_none=True),
            DelaySeconds=delay_seconds,
            MessageAttributes={
                "job_id": {"DataType": "String", "StringValue": command.job_id},
                "step": {"DataType": "String", "StringValue": command.step.value},
            },
        )

    def send_many(self, commands: list[StageCommand]) -> None:
        """SendMessageBatch, ten at a time; any entry SQS refuses raises (the stage retries, and
        the receivers' idempotency absorbs the commands that did go out)."""
        sqs = client("sqs")
        for start in range(0, len(commands), 10):
            entries = [
                {
                    "Id": str(index),
                    "MessageBody": command.model_dump_json(),
                    "MessageAttributes": {
                        "job_id": {"DataType": "String", "StringValue": command.job_id},
                        "step": {"DataType": "String", "StringValue": command.step.value},
                    },
                }
                for index, command in enumerate(commands[start : start + 10])
            ]
            answer = sqs.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
            if answer.get("Failed"):
                raise RuntimeError(f"SQS refused {len(answer['Failed'])} commands: {answer['Failed'][0]}")


class EventPublisher:
    def __init__(self, bus_name: str) -> None:
        self.bus_name = bus_name

    def publish_many(self, event_type: EventType, records: list[JobRecord]) -> None:
        """One event per job, ten per PutEvents call (a batch slice's Job Accepted events); any
        entry EventBridge refuses raises (the caller retries: lifecycle events are at-least-once)."""
        events = client("events")
        for start in range(0, len(records), 10):
            entries = [self._entry(event_type, record, None, None) for record in records[start : start + 10]]
            answer = events.put_events(Entries=entries)
            if answer.get("FailedEntryCount"):
                raise RuntimeError(
                    f"EventBridge refused {answer['FailedEntryCount']} {event_type.value} events: "
                    f"{json.dumps(answer['Entries'])[:500]}"
                )

    def publish(
        self,
        event_type: EventType,
        record: JobRecord,
        *,
        job_view: dict[str, Any] | None = None,
        step: str | None = None,
    ) -> None:
        answer = client("events").put_events(Entries=[self._entry(event_type, record, job_view, step)])
        if answer.get("FailedEntryCount"):
            # Losing a terminal event would lose the webhook: fail loudly so the stage retries.
            raise RuntimeError(f"EventBridge refused {event_type.value}: {json.dumps(answer['Entries'])}")
        logger.debug("event published", extra={"detail_type": event_type.value, "job_id": record.job_id})

    def _entry(
        self, event_type: EventType, record: JobRecord, job_view: dict[str, Any] | None, step: str | None
    ) -> dict[str, Any]:
        detail = LifecycleDetail(
            job_id=record.job_id,
            tenant_id=record.tenant_id,
            status=record.status,
            version=record.version,
            depth=record.depth,
            metadata=record.metadata,
            step=step,
            job=job_view,
        )
        return {
            "Source": EVENT_SOURCE,
            "DetailType": event_type.value,
            "Detail": detail.model_dump_json(),
            "EventBusName": self.bus_name,
            "Resources": [event_resource(record)],
        }


def event_resource(record: JobRecord) -> str:
    """The event's one resource. A batch line's names its batch (`baton:batch/<batch id>/job/<job
    id>`), every other job's is `baton:job/<job id>`: the terminal-events rule feeds the notify
    stage only the latter, as a line has no webhook of its own (its batch has), so notify would
    only spend requests on it. Set from the record's source, which only the batch fan-out sets:
    metadata a client writes cannot make a job's webhook be skipped."""
    batch_id = record.metadata.get("batch_id")
    if record.source == "batch" and batch_id:
        return f"baton:batch/{batch_id}/job/{record.job_id}"
    return f"baton:job/{record.job_id}"
