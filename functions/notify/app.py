"""notify stage: terminal lifecycle events (from the bus, via SQS) -> signed webhook deliveries."""

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.typing import LambdaContext

from baton.jobs import JobService
from baton.parsing import LifecycleEventRecord
from baton.settings import get_settings

logger = Logger()
tracer = Tracer()
metrics = Metrics()
service = JobService(get_settings())
processor = BatchProcessor(event_type=EventType.SQS, model=LifecycleEventRecord)


@tracer.capture_method
def record_handler(record: LifecycleEventRecord) -> dict[str, Any]:
    # Not wrapped in idempotency: a webhook may be delivered more than once (receivers dedupe
    # on webhook-id), and a failed delivery must be retried rather than remembered.
    return service.notify(record.body.detail)


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
