"""notify stage: terminal lifecycle events (from the bus, via SQS) -> signed webhook deliveries."""

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.idempotency import idempotent_function
from aws_lambda_powertools.utilities.typing import LambdaContext

from baton.idempotency import idempotency_prefix, notification_config, persistence_layer
from baton.jobs import JobService
from baton.models import LifecycleDetail
from baton.parsing import LifecycleEventRecord
from baton.retries import RetryPolicy
from baton.settings import get_settings

logger = Logger()
tracer = Tracer()
metrics = Metrics()
settings = get_settings()
service = JobService(settings)
retries = RetryPolicy.from_settings(settings)
idempotency = notification_config(settings)
processor = BatchProcessor(event_type=EventType.SQS, model=LifecycleEventRecord)


@idempotent_function(
    data_keyword_argument="detail",
    persistence_store=persistence_layer(settings),
    config=idempotency,
    key_prefix=idempotency_prefix("notify"),
)
def notify_once(detail: LifecycleDetail) -> dict[str, Any]:
    return service.notify(detail)


@tracer.capture_method
def record_handler(record: LifecycleEventRecord) -> dict[str, Any]:
    # Its job is already terminal: nothing to give up on. Past MaxReceiveCount the event waits in
    # the notify DLQ for `baton dlq redrive notify`.
    return retries.run(record, lambda: notify_once(detail=record.body.detail), stage="notify", give_up=None)


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    idempotency.register_lambda_context(context)
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
