"""Dead letters of the job steps (extract, infer, tool) and of the batch queue: each one handled
once, however many arrive.

A command that crashed or timed out its worker `MaxReceiveCount` times is moved to its step's DLQ
by SQS itself; no code of ours ran to record why. The dead-letter function consumes those DLQs
(an SQS event source on each): every message fails its job as `dead_lettered` (naming the step and
the attempts, emitting `Job Failed` so the webhook still fires), is archived in S3 for operators
(`baton dlq list | show | redrive`) and is then deleted from the DLQ. A batch queue message (a
slice command, or a line's terminal event to count) fails its batch the same way: the batch ends
`failed` with every line accounted for once (baton.batches.BatchService.dead_lettered); its
archive entry is under `batch/` and names the batch. Nothing is peeked or left
behind, so a DLQ never fills up and a new dead letter is never hidden behind old ones.

Archive layout (one JSON object per message, in Baton's bucket, kept for `RetentionDays`):

    dead-letters/<stage>/<YYYY-MM-DD of the command's first send>/<message id>.json

The key derives from the message alone, so a redelivered message (at-least-once) finds its own
archive entry: the write is conditional (`If-None-Match: *`), and only the first one counts.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parser.models import SqsRecordModel
from botocore.exceptions import ClientError
from pydantic import BaseModel, ValidationError

from baton.aws import client
from baton.batches import BatchLineEvent, SliceCommand, batch_message_of
from baton.clock import iso_from_ms, now_ms
from baton.failures import JobFailures
from baton.models import StageCommand
from baton.settings import Settings

logger = Logger(child=True)

ARCHIVE_PREFIX = "dead-letters"
UNRECOGNISED_STAGE = "unrecognised"
BATCH_STAGE = "batch"


class Outcome(StrEnum):
    """What the dead letter did to its job."""

    JOB_FAILED = "job_failed"  # the job failed as dead_lettered (by this letter or a copy of it)
    JOB_ALREADY_ENDED = "job_already_ended"  # it had ended otherwise before (completed, cancelled...)
    STALE_COMMAND = "stale_command"  # the job had moved on to another version or depth
    JOB_NOT_FOUND = "job_not_found"  # unknown or expired job
    UNRECOGNISED = "unrecognised"  # not a stage command: kept for a person to read
    BATCH_FAILING = "batch_failing"  # a batch message: its batch fails (every line still counted once)
    BATCH_ALREADY_ENDED = "batch_already_ended"  # its batch had ended (or expired) before


class ArchivedDeadLetter(BaseModel):
    """One archived dead letter, as `baton dlq` reads it back."""

    id: str  # <stage>/<date>/<message id>: what `baton dlq show` and the job's error name
    message_id: str
    stage: str
    queue_arn: str
    sent_at: str | None
    archived_at: str
    receive_count: int
    attempts: int
    outcome: Outcome
    job_id: str | None = None
    tenant_id: str | None = None
    version: int | None = None
    depth: int | None = None
    batch_id: str | None = None
    body: str
    message_attributes: dict[str, str] = {}

    @property
    def key(self) -> str:
        return archive_key(self.id)


def archive_key(archive_id: str) -> str:
    return f"{ARCHIVE_PREFIX}/{archive_id}.json"


def archive_id_of(stage: str, sent_ms: int, message_id: str) -> str:
    day = datetime.fromtimestamp(sent_ms / 1000, UTC).strftime("%Y-%m-%d")
    return f"{stage}/{day}/{message_id}"


def command_of(body: str) -> StageCommand | None:
    try:
        return StageCommand.model_validate_json(body)
    except ValidationError:
        return None


class BatchDeadLetters(Protocol):
    """What fails a batch whose queue message dead-lettered (baton.batches.BatchService)."""

    def dead_lettered(
        self, message: SliceCommand | BatchLineEvent, *, archive_id: str, attempts: int
    ) -> str: ...


class DeadLetterHandler:
    """Handles one DLQ record: fail its job, archive it, count it. Raises only when AWS fails (the
    record then returns after the DLQ's visibility timeout); nothing in a message body can make it
    raise, so a dead letter never becomes a crash loop of its own."""

    def __init__(
        self, failures: JobFailures, batches: BatchDeadLetters, settings: Settings, metrics: Metrics
    ) -> None:
        self.failures = failures
        self.batches = batches
        self.settings = settings
        self.bucket = settings.bucket
        # The handler's own instance: its namespace is read from the function's environment.
        self.metrics = metrics

    def handle(self, record: SqsRecordModel) -> dict[str, Any]:
        body = str(record.body)  # the raw text: this record model parses nothing inside it
        command = command_of(body)
        batch_message = None if command else batch_message_of(body)
        stage = command.step.value if command else (BATCH_STAGE if batch_message else UNRECOGNISED_STAGE)
        sent_ms = _sent_ms(record)
        archive_id = archive_id_of(stage, sent_ms, record.messageId)
        # The redrive policy moved it after exactly MaxReceiveCount deliveries; the receive count it
        # carries also counts deliveries from the DLQ (ours), so it is archived but not reported.
        attempts = self.settings.max_receive_count
        if batch_message is not None:
            outcome = Outcome(
                self.batches.dead_lettered(batch_message, archive_id=archive_id, attempts=attempts)
            )
        elif command is None:
            outcome = Outcome.UNRECOGNISED
            logger.warning(
                "unrecognised message in a DLQ: archived",
                extra={"message_id": record.messageId, "queue": record.eventSourceARN},
            )
        else:
            outcome = Outcome(
                self.failures.fail_dead_lettered(command, attempts=attempts, archive_id=archive_id)
            )
        letter = ArchivedDeadLetter(
            id=archive_id,
            message_id=record.messageId,
            stage=stage,
            queue_arn=record.eventSourceARN,
            sent_at=iso_from_ms(sent_ms),
            archived_at=iso_from_ms(now_ms()),
            receive_count=int(record.attributes.ApproximateReceiveCount),
            attempts=attempts,
            outcome=outcome,
            job_id=command.job_id if command else None,
            tenant_id=command.tenant_id if command else batch_message.tenant_id if batch_message else None,
            version=command.version if command else None,
            depth=command.depth if command else None,
            batch_id=batch_message.batch_id if batch_message else None,
            body=body,
            message_attributes={
                name: str(value.stringValue or value.binaryValue or "")
                for name, value in record.messageAttributes.items()
            },
        )
        first = self._archive(letter)
        if first:
            # Alarmed on (template.yaml DeadLetterAlarm): dead letters arriving, not queue depth.
            self.metrics.add_metric(name="DeadLetters", unit=MetricUnit.Count, value=1)
        logger.info(
            "dead letter handled",
            extra={
                "archive_id": archive_id,
                "job_id": letter.job_id,
                "batch_id": letter.batch_id,
                "stage": stage,
                "outcome": outcome.value,
                "first_delivery": first,
            },
        )
        return {"outcome": outcome.value, "archive_id": archive_id, "first_delivery": first}

    def _archive(self, letter: ArchivedDeadLetter) -> bool:
        """Write the archive entry once; False when a copy of this message already wrote it."""
        try:
            client("s3").put_object(
                Bucket=self.bucket,
                Key=letter.key,
                Body=letter.model_dump_json(indent=1).encode(),
                ContentType="application/json",
                IfNoneMatch="*",
            )
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code")
            if code in {"PreconditionFailed", "ConditionalRequestConflict"}:
                return False
            raise
        return True


def _sent_ms(record: SqsRecordModel) -> int:
    sent = record.attributes.SentTimestamp
    return int(sent.timestamp() * 1000) if isinstance(sent, datetime) else now_ms()
