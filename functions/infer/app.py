"""infer stage: call the model once per (job, version, depth) and record the result."""

from baton.idempotency import stage_config
from baton.parsing import StageCommandRecord
from baton.settings import get_settings
from baton.stages import sqs_stage_handler
from baton.wiring import infer_stage

settings = get_settings()
infer = infer_stage(settings)

lambda_handler = sqs_stage_handler(
    "infer",
    record_model=StageCommandRecord,
    payload=lambda record: record.body,
    work=lambda command, context: infer.run(command, remaining_ms=context.get_remaining_time_in_millis()),
    idempotency=stage_config(settings),
    give_up=infer.failures.ender,
    # A batch's model calls wait together, not one after another (template: InferBatchSize).
    concurrent=True,
    # No capacity at the provider: the command comes back delayed, spending no attempt.
    defer=infer.defer,
)
