"""notify stage: terminal lifecycle events (from the bus, via SQS) -> signed webhook deliveries."""

from baton.idempotency import notification_config
from baton.parsing import LifecycleEventRecord
from baton.settings import get_settings
from baton.stages import sqs_stage_handler
from baton.wiring import webhook_service

settings = get_settings()
webhooks = webhook_service(settings)

# Its job is already terminal: nothing to give up on. Past MaxReceiveCount the event waits in the
# notify DLQ for `baton dlq redrive notify`.
lambda_handler = sqs_stage_handler(
    "notify",
    record_model=LifecycleEventRecord,
    payload=lambda record: record.body.detail,
    work=lambda detail, _context: webhooks.notify(detail),
    idempotency=notification_config(settings),
)
