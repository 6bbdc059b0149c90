"""ingest stage: an S3 upload under uploads/<tenant>/ (S3 -> EventBridge -> SQS) becomes a job."""

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.typing import LambdaContext

from baton.jobs import JobService
from baton.parsing import UploadEventRecord
from baton.retries import RetryPolicy
from baton.settings import get_settings

logger = Logger()
tracer = Tracer()
metrics = Metrics()
settings = get_settings()
service = JobService(settings)
retries = RetryPolicy.from_settings(settings)
processor = BatchProcessor(event_type=EventType.SQS, model=UploadEventRecord)


@tracer.capture_method
def record_handler(record: UploadEventRecord) -> dict[str, Any]:
    # Idempotent by construction: the job id is derived from bucket + key + ETag.
    detail = record.body.detail

    def accept() -> dict[str, Any]:
        job = service.accept_upload(detail.bucket.name, detail.object.key, detail.object.etag)
        return {"job_id": job.job_id if job else None}

    # No job exists yet to fail: an upload that cannot become one ends in the ingest DLQ.
    return retries.run(record, accept, stage="ingest", give_up=None)


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
