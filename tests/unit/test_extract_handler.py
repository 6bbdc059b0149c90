"""The extract stage (functions/extract): a job's document in S3 -> text under extracted/ -> infer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest

from baton.models import StageCommand, Step
from baton.store import JobStore
from baton_dev.samples import sample_report_pdf

if TYPE_CHECKING:
    from conftest import AwsStack, EventTap, LoadedFunction

SAMPLE_EVENT = Path(__file__).resolve().parents[2] / "events" / "sqs-extract-command.json"


def job_with_document(
    aws: AwsStack, api: LoadedFunction, name: str, data: bytes, content_type: str | None
) -> str:
    """A job accepted by the API for a document uploaded under documents/acme/."""
    extra: dict[str, Any] = {"ContentType": content_type} if content_type else {}
    boto3.client("s3").put_object(Bucket=aws.bucket, Key=f"documents/acme/{name}", Body=data, **extra)
    body = {"input": {"prompt": "Summarize the report."}, "document": {"id": name}}
    response = api(aws.api_event("api-create-job.json", body=body, drop_headers=("Idempotency-Key",)))
    assert response["statusCode"] == 202, response["body"]
    return str(json.loads(response["body"])["id"])


def s3_keys(aws: AwsStack, prefix: str) -> list[str]:
    answer = boto3.client("s3").list_objects_v2(Bucket=aws.bucket, Prefix=prefix)
    return [str(item["Key"]) for item in answer.get("Contents", [])]


def test_pdf_is_extracted_and_handed_to_infer(
    aws: AwsStack, api: LoadedFunction, extract: LoadedFunction, bus_events: EventTap
) -> None:
    job_id = job_with_document(aws, api, "report.pdf", sample_report_pdf(), "application/pdf")
    bus_events.drain()

    assert extract(aws.take_event("ExtractQueue")) == {"batchItemFailures": []}

    text_key = f"extracted/acme/{job_id}.txt"
    stored = boto3.client("s3").get_object(Bucket=aws.bucket, Key=text_key)
    text = stored["Body"].read().decode()
    assert stored["ContentType"].startswith("text/plain")
    assert "Ledgerline processed 41.2 million payment requests" in text
    assert "Split schema changes into expand and contract releases" in text  # page two too

    record = JobStore(aws.jobs_table).get("acme", job_id)
    assert record.text_key == text_key
    assert record.status.value == "processing"
    assert record.current_step is Step.EXTRACT
    assert record.progress == 40
    assert record.timings.queued_ms is not None and record.timings.extract_ms is not None

    commands = [StageCommand.model_validate_json(m["Body"]) for m in aws.receive("InferQueue")]
    assert commands == [StageCommand(job_id=job_id, tenant_id="acme", step=Step.INFER, version=1, depth=0)]
    events = bus_events.drain()
    assert [(e["detail-type"], e["detail"]["step"]) for e in events] == [("Job Step Completed", "extract")]


def test_the_sample_event_drives_the_handler(
    aws: AwsStack, api: LoadedFunction, extract: LoadedFunction
) -> None:
    """events/sqs-extract-command.json, pointed at a real job, is what the handler consumes."""
    job_id = job_with_document(aws, api, "notes.md", b"# Notes\n\nThe *quarter* went well.", None)
    event: dict[str, Any] = json.loads(SAMPLE_EVENT.read_text())
    command = json.loads(event["Records"][0]["body"])
    event["Records"][0]["body"] = json.dumps({**command, "job_id": job_id})
    assert extract(event) == {"batchItemFailures": []}
    assert s3_keys(aws, "extracted/") == [f"extracted/acme/{job_id}.txt"]


@pytest.mark.parametrize(
    ("name", "data", "content_type", "error_type"),
    [
        ("photo.png", b"\x89PNG\r\n\x1a\n" + bytes(64), "image/png", "unsupported_document"),
        ("empty.pdf", b"%PDF-1.4\nthis is not really a pdf", "application/pdf", "unreadable_document"),
    ],
    ids=["unsupported", "unreadable"],
)
def test_bad_document_fails_the_job_without_retry(
    aws: AwsStack,
    api: LoadedFunction,
    extract: LoadedFunction,
    name: str,
    data: bytes,
    content_type: str,
    error_type: str,
) -> None:
    job_id = job_with_document(aws, api, name, data, content_type)
    # Retrying cannot help: no batch item failure, the job fails at once.
    assert extract(aws.take_event("ExtractQueue")) == {"batchItemFailures": []}
    record = JobStore(aws.jobs_table).get("acme", job_id)
    assert record.status.value == "failed"
    assert record.error is not None
    assert record.error.type == error_type
    assert record.error.retryable is False
    assert record.timings.total_ms is not None
    assert aws.queued("InferQueue") == 0
    assert s3_keys(aws, "extracted/") == []
    events = [json.loads(m["Body"]) for m in aws.receive("NotifyQueue")]
    assert [e["detail-type"] for e in events] == ["Job Failed"]
    assert events[0]["detail"]["job"]["error"]["type"] == error_type


def test_document_deleted_before_extraction_fails_the_job(
    aws: AwsStack, api: LoadedFunction, extract: LoadedFunction
) -> None:
    job_id = job_with_document(aws, api, "gone.txt", b"soon gone", "text/plain")
    boto3.client("s3").delete_object(Bucket=aws.bucket, Key="documents/acme/gone.txt")
    assert extract(aws.take_event("ExtractQueue")) == {"batchItemFailures": []}
    record = JobStore(aws.jobs_table).get("acme", job_id)
    assert record.error is not None and record.error.type == "unreadable_document"


def test_cancelled_job_is_not_extracted(aws: AwsStack, api: LoadedFunction, extract: LoadedFunction) -> None:
    job_id = job_with_document(aws, api, "notes.txt", b"Some notes.", "text/plain")
    assert api(aws.api_event("api-cancel-job.json", job_id=job_id))["statusCode"] == 200
    assert extract(aws.take_event("ExtractQueue")) == {"batchItemFailures": []}
    assert s3_keys(aws, "extracted/") == []
    assert aws.queued("InferQueue") == 0
    assert JobStore(aws.jobs_table).get("acme", job_id).status.value == "cancelled"
