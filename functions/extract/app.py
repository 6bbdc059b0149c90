"""extract stage: a job's document in S3 -> its text in S3, then the infer command."""

from baton.idempotency import stage_config
from baton.parsing import StageCommandRecord
from baton.settings import get_settings
from baton.stages import sqs_stage_handler
from baton.wiring import extract_stage

settings = get_settings()
extract = extract_stage(settings)

lambda_handler = sqs_stage_handler(
    "extract",
    record_model=StageCommandRecord,
    payload=lambda record: record.body,
    work=lambda command, _context: extract.run(command),
    idempotency=stage_config(settings),
    give_up=extract.failures.ender,
)
