"""extract stage: a job's document in S3 -> its text in S3, then the infer command."""

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.idempotency import idempotent_function
from aws_lambda_powertools.utilities.typing import LambdaContext

from baton.idempotency import idempotency_prefix, persistence_layer, stage_config
from baton.jobs import JobService
from baton.models import StageCommand
from baton.parsing import StageCommandRecord
from baton.retries import RetryPolicy
from baton.settings import get_settings

logger = Logger()
tracer = Tracer()
metrics = Metrics()
settings = get_settings()
service = JobService(settings)
retries = RetryPolicy.from_settings(settings)
idempotency = stage_config(settings)
processor = BatchProcessor(event_type=EventType.SQS, model=StageCommandRecord)


@idempotent_function(
    data_keyword_argument="command",
    persistence_store=persistence_layer(settings),
    config=idempotency,
    key_prefix=idempotency_prefix("extract"),
)
def extract_once(command: StageCommand) -> dict[str, Any]:
    return service.run_extract(command)


@tracer.capture_method
def record_handler(record: StageCommandRecord) -> dict[str, Any]:
    command = record.body
    return retries.run(
        record, lambda: extract_once(command=command), stage="extract", give_up=service.ender(command)
    )


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    idempotency.register_lambda_context(context)
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
