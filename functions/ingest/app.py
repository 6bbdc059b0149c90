"""ingest stage: an S3 upload under uploads/<tenant>/ (S3 -> EventBridge -> SQS) becomes a job."""

from typing import Any

from aws_lambda_powertools.utilities.parser.models import S3EventNotificationEventBridgeDetailModel

from baton.parsing import UploadEventRecord
from baton.settings import get_settings
from baton.stages import sqs_stage_handler
from baton.wiring import job_intake

intake = job_intake(get_settings())


def accept(detail: S3EventNotificationEventBridgeDetailModel) -> dict[str, Any]:
    job = intake.accept_upload(detail.bucket.name, detail.object.key, detail.object.etag)
    return {"job_id": job.job_id if job else None}


# Idempotent by construction: the job id is derived from bucket + key + ETag. No job exists yet to
# fail: a permanent failure (e.g. an unknown tenant) is logged, counted and dropped by the retry
# policy; only crashes reach the ingest DLQ.
lambda_handler = sqs_stage_handler(
    "ingest",
    record_model=UploadEventRecord,
    payload=lambda record: record.body.detail,
    work=lambda detail, _context: accept(detail),
    idempotency=None,
)
