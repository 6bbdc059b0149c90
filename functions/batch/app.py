"""batch stage: a batch's lines become jobs slice by slice (or are cancelled), and each line's
terminal job event is counted; the last one writes the output and errors files."""

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import ValidationError

from baton.batches import SliceCommand
from baton.parsing import BatchMessageRecord, LifecycleEvent
from baton.retries import Failure
from baton.settings import get_settings
from baton.stages import sqs_stage_handler
from baton.wiring import batch_service

batches = batch_service(get_settings())


def handle(message: Any) -> dict[str, Any]:
    return batches.handle(message)


def give_up(message: Any) -> Callable[[Failure, int], None] | None:
    """A slice command that cannot run (permanently, or past its attempts) fails the batch: its
    lines could never start (baton.batches.BatchService.give_up). A line's count that cannot be
    made is left to retry, then to the batch DLQ, whose dead letters fail the batch too."""
    if not isinstance(message, SliceCommand):
        return None

    def fail_batch(failure: Failure, attempt: int) -> None:
        reason = (
            f"{message.kind} of lines from {message.start} failed after {attempt} attempt(s): {failure.type}"
        )
        batches.give_up(message, reason)

    return fail_batch


# Idempotent by construction: a line's job id derives from the batch and its custom_id, and a
# line is counted once by a conditional marker in the same transaction as its count.
stage_handler = sqs_stage_handler(
    "batch",
    record_model=BatchMessageRecord,
    payload=lambda record: record.body,
    work=lambda message, _context: handle(message),
    idempotency=None,
    give_up=give_up,
)


def terminal_events(event: dict[str, Any]) -> list[tuple[str, str, str, dict[str, str]]]:
    """The lines' terminal job events among the invocation's messages (the rest: slice commands,
    and anything unreadable, which the stage handler reports)."""
    found = []
    for raw in event.get("Records", []):
        try:
            body = BatchMessageRecord.model_validate(raw).body
        except ValidationError:
            continue
        if isinstance(body, LifecycleEvent):
            detail = body.detail
            found.append((detail.tenant_id, detail.job_id, detail.status.value, dict(detail.metadata)))
    return found


def lambda_handler(event: dict[str, Any], context: LambdaContext) -> Any:
    """The invocation's terminal events are counted together first (one transaction for up to
    ten lines of a batch, not one each); then every message runs as usual, each line finding
    itself counted."""
    batches.count_together(terminal_events(event))
    try:
        return stage_handler(event, context)
    finally:
        batches.forget_counted()
