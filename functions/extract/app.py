"""extract stage: a job's document in S3 -> its text in S3, then the infer command."""

from baton.idempotency import stage_config
from baton.jobs import JobService
from baton.parsing import StageCommandRecord
from baton.settings import get_settings
from baton.stages import sqs_stage_handler

settings = get_settings()
service = JobService(settings)

lambda_handler = sqs_stage_handler(
    "extract",
    record_model=StageCommandRecord,
    payload=lambda record: record.body,
    work=lambda command, _context: service.run_extract(command),
    idempotency=stage_config(settings),
    give_up=service.ender,
)
