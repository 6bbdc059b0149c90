"""deadletter: each message of a job step's DLQ (extract, infer, tool), handled once: its job fails
as dead_lettered, the message is archived in S3, then deleted from the DLQ. A message of the batch
DLQ fails its batch instead (every line still accounted for once)."""

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.utilities.parser.models import SqsRecordModel

from baton.settings import get_settings
from baton.stages import sqs_stage_handler
from baton.wiring import dead_letter_handler

dead_letters = dead_letter_handler(get_settings(), Metrics())

# Idempotent by construction (a conditional archive write, a conditional job transition): no
# idempotency record. A failure (AWS unreachable) backs off and retries; a body cannot make it fail.
lambda_handler = sqs_stage_handler(
    "deadletter",
    record_model=SqsRecordModel,
    payload=lambda record: record,
    work=lambda record, _context: dead_letters.handle(record),
    idempotency=None,
)
