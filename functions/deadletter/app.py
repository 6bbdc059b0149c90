"""deadletter: each message of a job step's DLQ (extract, infer, tool), handled once: its job fails
as dead_lettered, the message is archived in S3, then deleted from the DLQ."""

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.parser.models import SqsRecordModel
from aws_lambda_powertools.utilities.typing import LambdaContext

from baton.deadletters import DeadLetterHandler
from baton.jobs import JobService
from baton.settings import get_settings

logger = Logger()
tracer = Tracer()
metrics = Metrics()
dead_letters = DeadLetterHandler(JobService(get_settings()), metrics)
processor = BatchProcessor(event_type=EventType.SQS, model=SqsRecordModel)


@tracer.capture_method
def record_handler(record: SqsRecordModel) -> dict[str, Any]:
    return dead_letters.handle(record)


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
