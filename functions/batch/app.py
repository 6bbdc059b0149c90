"""batch stage: a batch's lines become jobs slice by slice (or are cancelled), and each line's
terminal job event is counted; the last one writes the output and errors files."""

from typing import Any

from baton.batches import BatchService
from baton.jobs import JobService
from baton.parsing import BatchMessageRecord
from baton.settings import get_settings
from baton.stages import sqs_stage_handler

settings = get_settings()
batches = BatchService(settings, JobService(settings))


def handle(message: Any) -> dict[str, Any]:
    return batches.handle(message)


# Idempotent by construction: a line's job id derives from the batch and its custom_id, and a
# line is counted once by a conditional marker in the same transaction as its count.
lambda_handler = sqs_stage_handler(
    "batch",
    record_model=BatchMessageRecord,
    payload=lambda record: record.body,
    work=lambda message, _context: handle(message),
    idempotency=None,
)
