"""notify stage: terminal lifecycle events (from the bus, via SQS) -> signed webhook deliveries."""

from baton.idempotency import notification_config
from baton.jobs import JobService
from baton.parsing import LifecycleEventRecord
from baton.settings import get_settings
from baton.stages import sqs_stage_handler

settings = get_settings()
service = JobService(settings)

# Its job is already terminal: nothing to give up on. Past MaxReceiveCount the event waits in the
# notify DLQ for `baton dlq redrive notify`.
lambda_handler = sqs_stage_handler(
    "notify",
    record_model=LifecycleEventRecord,
    payload=lambda record: record.body.detail,
    work=lambda detail, _context: service.notify(detail),
    idempotency=notification_config(settings),
)
