"""The sweeper (scheduled every minute): ends jobs whose step gave up in a DLQ, and overdue jobs.

A message that crashed or timed out its worker `maxReceiveCount` times is moved to its stage's DLQ
by SQS itself; no code of ours ran to record why. The sweeper peeks every DLQ without consuming
(messages stay inspectable and re-drivable with `baton dlq`) and fails their jobs, which emits
`Job Failed` so the webhook still fires. Jobs past their `timeout_seconds` fail as `timeout`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools import Logger
from pydantic import ValidationError

from baton.aws import client
from baton.clock import now_ms
from baton.deadletters import peek_messages
from baton.jobs import JobService
from baton.models import StageCommand

logger = Logger(child=True)

PEEK_MAX = 100  # messages per DLQ per sweep; the rest wait for the next minute


@dataclass(frozen=True)
class DeadLetter:
    tenant_id: str
    job_id: str
    stage: str
    attempts: int


def dead_letter_of(message: dict[str, Any]) -> DeadLetter | None:
    """Which job a dead-lettered message belongs to: a stage command, or a lifecycle event."""
    attempts = int(message.get("Attributes", {}).get("ApproximateReceiveCount", 0))
    body = message.get("Body", "")
    try:
        command = StageCommand.model_validate_json(body)
        return DeadLetter(command.tenant_id, command.job_id, command.step.value, attempts)
    except ValidationError:
        pass
    try:
        event = json.loads(body)
    except ValueError:
        return None
    detail = event.get("detail") if isinstance(event, dict) else None
    if isinstance(detail, dict) and detail.get("job_id") and detail.get("tenant_id"):
        return DeadLetter(str(detail["tenant_id"]), str(detail["job_id"]), "notify", attempts)
    return None


class Sweeper:
    def __init__(self, service: JobService) -> None:
        self.service = service

    def sweep(self) -> dict[str, int]:
        dead_lettered = self.sweep_dead_letters()
        overdue = self.service.fail_overdue(now_ms())
        if dead_lettered or overdue:
            logger.info("sweep", extra={"dead_lettered_failed": dead_lettered, "overdue_failed": overdue})
        return {"dead_lettered_failed": dead_lettered, "overdue_failed": overdue}

    def sweep_dead_letters(self) -> int:
        failed = 0
        for queue_url in self.service.settings.dead_letter_queues:
            queue = queue_url.rsplit("/", 1)[-1]
            if not _has_messages(queue_url):
                continue  # the usual case: skip the long poll
            for message in peek_messages(client("sqs"), queue_url, max_messages=PEEK_MAX):
                letter = dead_letter_of(message)
                if letter is None:
                    logger.warning(
                        "unrecognised message in a DLQ",
                        extra={"queue": queue, "message_id": message["MessageId"]},
                    )
                    continue
                if letter.stage == "notify":
                    # Its job is already terminal: only the webhook is stuck (baton dlq redrive).
                    continue
                if self.service.fail_dead_lettered(
                    letter.tenant_id, letter.job_id, stage=letter.stage, attempts=letter.attempts, queue=queue
                ):
                    failed += 1
        return failed


def _has_messages(queue_url: str) -> bool:
    attributes = client("sqs").get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return any(int(value) > 0 for value in attributes.values())
