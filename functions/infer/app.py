"""infer stage: call the model once per (job, version, depth) and record the result."""

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
    key_prefix=idempotency_prefix("infer"),
)
def infer_once(command: StageCommand, remaining_ms: int) -> dict[str, Any]:
    return service.run_infer(command, remaining_ms=remaining_ms)


@tracer.capture_method
def record_handler(record: StageCommandRecord, lambda_context: LambdaContext) -> dict[str, Any]:
    command = record.body

    def infer() -> dict[str, Any]:
        return infer_once(command=command, remaining_ms=lambda_context.get_remaining_time_in_millis())

    return retries.run(record, infer, stage="infer", give_up=service.ender(command))


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    idempotency.register_lambda_context(context)
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
