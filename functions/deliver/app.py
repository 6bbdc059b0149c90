"""deliver stage: each message of the delivery queue is one webhook attempt.

The attempts of one batch run concurrently (one thread each), so a slow receiver (up to its 15 s)
never delays another's; Powertools reports failed records (crashes, AWS errors) only, since a
receiver's failure is recorded in the delivery log and scheduled, not raised.
"""

import asyncio
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.batch import (
    AsyncBatchProcessor,
    EventType,
    async_process_partial_response,
)
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.typing import LambdaContext

from baton.parsing import DeliveryMessageRecord
from baton.settings import get_settings
from baton.wiring import webhook_service

logger = Logger()
tracer = Tracer()
metrics = Metrics()
webhooks = webhook_service(get_settings())
processor = AsyncBatchProcessor(event_type=EventType.SQS, model=DeliveryMessageRecord)


async def record_handler(record: DeliveryMessageRecord) -> dict[str, Any]:
    return await asyncio.to_thread(webhooks.attempt, record.body)


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    return async_process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
