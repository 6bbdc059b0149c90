"""What the parts of a job's life share (intake, stages, failures): the stage command queues, the
job as its owner sees it, and the terminal event that ends every job."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from baton import telemetry
from baton.blobs import BlobStore
from baton.messaging import CommandQueue, EventPublisher
from baton.models import TERMINAL_EVENT_FOR_STATUS, StageCommand, Step
from baton.records import JobRecord, JobView
from baton.settings import Settings

logger = Logger(child=True)
# Powertools Metrics instances share one metric set; each handler's @log_metrics flushes it.
metrics = Metrics()


def command_for(record: JobRecord, step: Step, **fields: Any) -> StageCommand:
    """A command for the job's `step` at its current version and depth (older ones are stale)."""
    return StageCommand(
        job_id=record.job_id,
        tenant_id=record.tenant_id,
        step=step,
        version=record.version,
        depth=record.depth,
        **fields,
    )


class StageQueues:
    """The job steps' command queues (extract, infer, tool): each command goes to its step's."""

    def __init__(self, queues: Mapping[Step, CommandQueue]) -> None:
        self._queues = dict(queues)

    @classmethod
    def from_settings(cls, settings: Settings) -> StageQueues:
        return cls(
            {
                Step.EXTRACT: CommandQueue(settings.extract_queue_url),
                Step.INFER: CommandQueue(settings.infer_queue_url),
                Step.TOOL: CommandQueue(settings.tool_queue_url),
            }
        )

    def send(self, command: StageCommand, *, delay_seconds: int = 0) -> None:
        self._queues[command.step].send(command, delay_seconds=delay_seconds)

    def send_many(self, step: Step, commands: list[StageCommand]) -> None:
        self._queues[step].send_many(commands)

    def schedule(self, record: JobRecord, step: Step) -> None:
        """The job's next step."""
        self.send(command_for(record, step))

    def wake(self, record: JobRecord, reason: str) -> None:
        """Resume the job's background model call now (the provider's webhook, or a cancel)."""
        self.send(command_for(record, Step.INFER, wake=reason[:200]))


@dataclass(frozen=True)
class JobViews:
    """The job as its owner sees it: a large result as a presigned URL, the cost priced."""

    settings: Settings
    blobs: BlobStore

    def public_view(self, record: JobRecord) -> dict[str, Any]:
        return record.public_view(self._result_url, self.settings.model_prices)

    def view(self, record: JobRecord) -> JobView:
        return record.view(self._result_url, self.settings.model_prices)

    def _result_url(self, key: str) -> str:
        return self.blobs.presigned_url(key, expires_in=self.settings.result_url_expiry_seconds)


@dataclass(frozen=True)
class TerminalEvents:
    """The event that says a job ended (or waits for review): its webhook hangs on it."""

    publisher: EventPublisher
    views: JobViews

    def publish(self, record: JobRecord) -> None:
        self.publisher.publish(
            TERMINAL_EVENT_FOR_STATUS[record.status], record, job_view=self.views.public_view(record)
        )
        # One series per terminal state: JobsCompleted, JobsFailed, JobsCancelled, JobsNeedsReview.
        name = "Jobs" + record.status.value.title().replace("_", "")
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)
        telemetry.job_settled(record, record.cost(self.views.settings.model_prices))

    def announce_again(self, record: JobRecord) -> None:
        """This very step ended the job, and its command is back: the invocation that wrote the
        terminal state did not finish (it died, or PutEvents failed and it raised), so its terminal
        event may never have been published, and without it no webhook fires. Publish it again:
        lifecycle events are at-least-once, and notify delivers once per (job, status).
        (A command whose step finished is answered by its idempotency record and never gets here.)"""
        logger.info("terminal event published again", extra={"job_id": record.job_id})
        self.publisher.publish(
            TERMINAL_EVENT_FOR_STATUS[record.status], record, job_view=self.views.public_view(record)
        )
