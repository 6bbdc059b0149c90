"""How jobs fail: a step that cannot succeed, a command that reached its DLQ, a job past its
deadline (or its review window). Every path ends in one conditional write and the terminal event."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aws_lambda_powertools import Logger

from baton.errors import JobNotFoundError, StaleWriteError
from baton.lifecycle import TerminalEvents
from baton.models import JobStatus, StageCommand
from baton.records import JobError, JobRecord
from baton.retries import Failure
from baton.store import JobStore

logger = Logger(child=True)


@dataclass(frozen=True)
class JobFailures:
    store: JobStore
    terminal: TerminalEvents

    def fail(self, record: JobRecord, error_type: str, message: str, *, retryable: bool = False) -> None:
        # Only a job still at the state it was read in (same version) fails; one waiting for
        # review fails only from review (rejected or expired).
        from_statuses = (
            (JobStatus.NEEDS_REVIEW,)
            if record.status is JobStatus.NEEDS_REVIEW
            else (JobStatus.PENDING, JobStatus.PROCESSING)
        )
        try:
            failed = self.store.mark_failed(
                record,
                JobError(type=error_type, message=message, retryable=retryable),
                from_statuses=from_statuses,
            )
        except StaleWriteError:
            logger.info("job already finished; failure not recorded", extra={"job_id": record.job_id})
            return
        self.terminal.publish(failed)
        logger.warning(
            "job failed", extra={"job_id": record.job_id, "error_type": error_type, "reason": message}
        )

    def ender(self, command: StageCommand) -> Callable[[Failure, int], None]:
        """What the retry policy calls when this command's step cannot succeed."""

        def end(failure: Failure, attempts: int) -> None:
            message = failure.message
            if failure.retryable:
                message = f"{message} (the {command.step.value} step gave up after {attempts} attempts)"
            self.give_up(command, failure.type, message, retryable=bool(failure.retryable))

        return end

    def give_up(self, command: StageCommand, error_type: str, message: str, *, retryable: bool) -> None:
        """End the job of a command whose step cannot succeed (permanent error or retries spent)."""
        try:
            record = self.store.get(command.tenant_id, command.job_id)
        except JobNotFoundError:
            return
        if record.is_settled or record.version != command.version:
            return
        self.fail(record, error_type, message, retryable=retryable)

    def fail_dead_lettered(self, command: StageCommand, *, attempts: int, archive_id: str) -> str:
        """A command of this job reached its step's DLQ: the job fails (its webhook still fires)
        unless it already ended or moved on. Returns what happened (baton.deadletters.Outcome)."""
        try:
            record = self.store.get(command.tenant_id, command.job_id)
        except JobNotFoundError:
            return "job_not_found"
        if record.is_settled:
            ended_by_us = record.error is not None and record.error.type == "dead_lettered"
            return "job_failed" if ended_by_us else "job_already_ended"
        if record.version != command.version or record.depth != command.depth:
            return "stale_command"
        self.fail(
            record,
            "dead_lettered",
            f"the {command.step.value} step failed {attempts} times (crash or timeout); "
            f"its message is archived as dead letter {archive_id}",
        )
        return "job_failed"

    def fail_overdue(self, now: int, *, limit: int, keep_going: Callable[[], bool] = lambda: True) -> int:
        """Jobs past their deadline end as failed with error.type timeout: at most `limit` per run,
        oldest deadline first. Each job visited leaves the open-jobs index (failed, or found ended or
        expired), so the next run starts where this one stopped and nothing is skipped."""
        failed = 0
        for tenant_id, job_id in self.store.overdue(now, limit=limit):
            if not keep_going():
                break
            try:
                record = self.store.get(tenant_id, job_id)
            except JobNotFoundError:
                self.store.leave_open_index(tenant_id, job_id)  # expired: TTL may lag for days
                continue
            if record.is_terminal or record.deadline_ms >= now:
                continue
            if record.status is JobStatus.NEEDS_REVIEW:
                self.fail(
                    record, "review_expired", "nobody approved or rejected the job within the review window"
                )
            else:
                self.fail(record, "timeout", "the job ran past its timeout_seconds")
            failed += 1
        return failed
