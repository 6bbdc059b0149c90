"""The ingest stage (functions/ingest): an upload under uploads/<tenant>/ becomes a job."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

from baton.intake import upload_job_id
from baton.messaging import EventPublisher
from baton.models import StageCommand, Step
from baton.store import JobStore
from baton.tenants import TenantStore
from baton_dev.samples import sample_report_pdf

if TYPE_CHECKING:
    from conftest import AwsStack, LoadedFunction

SAMPLE_EVENT = Path(__file__).resolve().parents[2] / "events" / "sqs-ingest-s3-upload.json"
KEY = "uploads/acme/report.pdf"


@pytest.fixture
def tenant(aws: AwsStack) -> str:
    TenantStore(aws.jobs_table).create_api_key("acme")
    return "acme"


def upload(
    aws: AwsStack, key: str = KEY, data: bytes | None = None, metadata: dict[str, str] | None = None
) -> str:
    answer = boto3.client("s3").put_object(
        Bucket=aws.bucket,
        Key=key,
        Body=sample_report_pdf() if data is None else data,
        ContentType="application/pdf",
        Metadata=metadata or {},
    )
    return str(answer["ETag"]).strip('"')


def sample_event(aws: AwsStack, *, key: str = KEY, message_id: str | None = None) -> dict[str, Any]:
    """events/sqs-ingest-s3-upload.json, pointed at this stack's bucket."""
    event: dict[str, Any] = json.loads(SAMPLE_EVENT.read_text())
    upload_event = json.loads(event["Records"][0]["body"])
    upload_event["detail"]["bucket"]["name"] = aws.bucket
    upload_event["resources"] = [f"arn:aws:s3:::{aws.bucket}"]
    upload_event["detail"]["object"]["key"] = key
    record = aws.sqs_record(json.dumps(upload_event), message_id=message_id)
    return {"Records": [record]}


def jobs(aws: AwsStack) -> list[dict[str, Any]]:
    items = boto3.client("dynamodb").scan(TableName=aws.jobs_table)["Items"]
    return [item for item in items if item["sk"]["S"].startswith("JOB#")]


def test_upload_becomes_a_job(aws: AwsStack, ingest: LoadedFunction, tenant: str) -> None:
    """S3 -> EventBridge (the template's UploadsRule) -> IngestQueue -> ingest -> job -> extract."""
    etag = upload(
        aws, metadata={"prompt": "List the action items.", "webhook-url": "https://hooks.example.com/x"}
    )
    event = aws.take_event("IngestQueue")
    assert ingest(event) == {"batchItemFailures": []}

    job_id = upload_job_id(aws.bucket, KEY, etag)
    record = JobStore(aws.jobs_table).get("acme", job_id)
    assert record.source == "upload"
    assert record.document_key == KEY
    assert record.request["input"] == {"prompt": "List the action items."}
    assert record.webhook == {"url": "https://hooks.example.com/x"}
    assert record.metadata == {"source_key": KEY}
    commands = [StageCommand.model_validate_json(m["Body"]) for m in aws.receive("ExtractQueue")]
    assert commands == [StageCommand(job_id=job_id, tenant_id="acme", step=Step.EXTRACT, version=1, depth=0)]


def test_same_upload_event_twice_makes_one_job(aws: AwsStack, ingest: LoadedFunction, tenant: str) -> None:
    upload(aws)
    assert ingest(sample_event(aws, message_id="first")) == {"batchItemFailures": []}
    assert ingest(sample_event(aws, message_id="replayed")) == {"batchItemFailures": []}
    assert aws.load("IngestFunction")(sample_event(aws, message_id="elsewhere")) == {"batchItemFailures": []}

    [item] = jobs(aws)
    sample = json.loads(json.loads(SAMPLE_EVENT.read_text())["Records"][0]["body"])
    assert item["sk"]["S"] == "JOB#" + upload_job_id(aws.bucket, KEY, sample["detail"]["object"]["etag"])
    record = JobStore(aws.jobs_table).get("acme", item["job_id"]["S"])
    assert record.request["input"] == {"prompt": "Summarize this document."}  # the default prompt
    assert aws.queued("ExtractQueue") == 1


def test_new_content_under_the_same_key_is_a_new_job(
    aws: AwsStack, ingest: LoadedFunction, tenant: str
) -> None:
    first = upload(aws, data=b"%PDF-1.4 first version")
    ingest(aws.take_event("IngestQueue"))
    second = upload(aws, data=b"%PDF-1.4 second version")
    ingest(aws.take_event("IngestQueue"))
    assert first != second
    assert {item["job_id"]["S"] for item in jobs(aws)} == {
        upload_job_id(aws.bucket, KEY, first),
        upload_job_id(aws.bucket, KEY, second),
    }


def test_upload_for_an_unknown_tenant_is_logged_counted_and_dropped_at_once(
    aws: AwsStack,
    ingest: LoadedFunction,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A permanent error with no job to fail: no retries (7 deliveries into the DLQ fired its alarm)."""
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Baton")
    upload(aws, key="uploads/nobody/report.pdf")
    event = aws.take_event("IngestQueue")
    capsys.readouterr()
    caplog.clear()

    # No batch item failure: the poller deletes the message; it is neither redelivered nor dead-lettered.
    assert ingest(event) == {"batchItemFailures": []}

    assert jobs(aws) == []
    assert aws.queued("ExtractQueue") == 0
    dropped = [record for record in caplog.records if "no job to end: dropped" in record.getMessage()]
    assert len(dropped) == 1, caplog.text
    assert dropped[0].levelname == "ERROR"
    reason = str(getattr(dropped[0], "reason", ""))
    assert "uploads/nobody/report.pdf" in reason and "tenant 'nobody' does not exist" in reason, reason
    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert [line.get("PermanentFailuresDropped") for line in emf] == [[1.0]], emf


@pytest.mark.parametrize("key", ["uploads/acme/", "uploads/report.pdf"])
def test_objects_outside_a_tenant_folder_are_ignored(
    aws: AwsStack, ingest: LoadedFunction, tenant: str, key: str
) -> None:
    upload(aws, key=key)
    assert ingest(sample_event(aws, key=key)) == {"batchItemFailures": []}
    assert jobs(aws) == []
    assert aws.queued("ExtractQueue") == 0


def test_only_uploads_reach_the_ingest_queue(aws: AwsStack, tenant: str) -> None:
    """The template's UploadsRule matches this bucket's uploads/ prefix only."""
    upload(aws, key="documents/acme/report.pdf")
    upload(aws, key="results/acme/x.json", data=b"{}")
    assert aws.queued("IngestQueue") == 0
    upload(aws)
    assert aws.queued("IngestQueue") == 1


def test_retry_after_a_failed_hand_off_still_starts_the_job(
    aws: AwsStack, ingest: LoadedFunction, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload(aws)
    event = aws.take_event("IngestQueue")
    with monkeypatch.context() as patch:
        patch.setattr(EventPublisher, "publish", _eventbridge_throttled)
        with pytest.raises(BatchProcessingError):
            ingest(event)
    assert len(jobs(aws)) == 1  # stored before the hand-off failed
    assert ingest(event) == {"batchItemFailures": []}  # SQS redelivers the upload event
    assert aws.queued("ExtractQueue") == 1


def _eventbridge_throttled(*args: Any, **kwargs: Any) -> None:
    raise RuntimeError("EventBridge refused Job Accepted: ThrottlingException")
