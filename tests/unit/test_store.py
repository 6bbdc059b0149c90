"""JobStore on the template's own jobs table: every state change is one conditional write."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import boto3
import pytest

from baton.aws import to_dynamo
from baton.clock import now_ms
from baton.errors import JobConflictError, JobNotFoundError, StaleWriteError
from baton.models import JobStatus, Step
from baton.records import JobError, JobRecord, JobResult, Usage, job_key
from baton.store import JobStore

if TYPE_CHECKING:
    from conftest import AwsStack

TENANT = "acme"


def new_record(job_id: str = "job_store_1", **changes: Any) -> JobRecord:
    now = now_ms()
    fields: dict[str, Any] = {
        "job_id": job_id,
        "tenant_id": TENANT,
        "model": "baton-local",
        "created_ms": now,
        "updated_ms": now,
        "expires_at": now // 1000 + 86_400,
        "deadline_ms": now + 900_000,
        "metadata": {"customer": "acme-42"},
        "request": {"input": {"prompt": "hello"}},
    }
    fields.update(changes)
    return JobRecord(**fields)


def raw_item(aws: AwsStack, job_id: str) -> dict[str, Any]:
    item: dict[str, Any] = boto3.client("dynamodb").get_item(
        TableName=aws.jobs_table, Key=to_dynamo(job_key(TENANT, job_id)), ConsistentRead=True
    )["Item"]
    return item


@pytest.fixture
def store(aws: AwsStack) -> JobStore:
    return JobStore(aws.jobs_table)


def test_create_is_conditional(store: JobStore) -> None:
    record = new_record()
    assert store.create(record) is True
    assert store.create(record.model_copy(update={"model": "other"})) is False
    assert store.get(TENANT, record.job_id).model == "baton-local"


def test_round_trip_keeps_every_field(store: JobStore) -> None:
    record = new_record(
        webhook={"url": "https://hooks.example.com/x"},
        document_key="documents/acme/report.pdf",
        idempotency_key="key-1",
    )
    store.create(record)
    assert store.get(TENANT, record.job_id) == record


def test_unknown_foreign_and_expired_jobs_are_not_found(store: JobStore) -> None:
    store.create(new_record("job_live"))
    store.create(new_record("job_expired", expires_at=now_ms() // 1000 - 1))
    with pytest.raises(JobNotFoundError):
        store.get(TENANT, "job_unknown")
    with pytest.raises(JobNotFoundError):
        store.get("other-tenant", "job_live")
    with pytest.raises(JobNotFoundError):
        store.get(TENANT, "job_expired")  # TTL deletion lags: the reader treats it as gone


def test_transitions_move_a_job_through_its_steps(store: JobStore) -> None:
    record = new_record()
    store.create(record)
    started = store.start_step(record, Step.INFER, progress=50)
    assert started.status is JobStatus.PROCESSING
    assert started.current_step is Step.INFER
    assert started.progress == 50
    assert started.timings.queued_ms is not None and started.timings.queued_ms >= 0
    assert Step.INFER.value in started.step_started_ms
    done = store.mark_completed(
        started, result=JobResult(text="hi", finish_reason="stop"), usage=Usage(total_tokens=3)
    )
    assert done.status is JobStatus.COMPLETED
    assert done.progress == 100
    assert done.result == JobResult(text="hi", finish_reason="stop")
    assert done.usage.total_tokens == 3
    assert done.timings.infer_ms is not None and done.timings.total_ms is not None
    assert store.get(TENANT, record.job_id) == done


def test_write_for_another_version_is_stale(store: JobStore, aws: AwsStack) -> None:
    record = new_record()
    store.create(record)
    before = raw_item(aws, record.job_id)
    with pytest.raises(StaleWriteError):
        store.start_step(record.model_copy(update={"version": 2}), Step.INFER, progress=50)
    assert raw_item(aws, record.job_id) == before


def test_write_for_a_missing_job_is_stale(store: JobStore) -> None:
    with pytest.raises(StaleWriteError):
        store.start_step(new_record("job_never_created"), Step.INFER, progress=50)
    with pytest.raises(JobNotFoundError):
        store.get(TENANT, "job_never_created")  # the failed update must not have created it


def test_no_write_after_completed(store: JobStore, aws: AwsStack) -> None:
    record = new_record()
    store.create(record)
    done = store.mark_completed(record, result=JobResult(text="first"), usage=Usage())
    frozen = raw_item(aws, record.job_id)
    with pytest.raises(StaleWriteError):
        store.mark_failed(record, JobError(type="model_error", message="late"))
    with pytest.raises(StaleWriteError):
        store.mark_completed(done, result=JobResult(text="second"), usage=Usage())
    with pytest.raises(StaleWriteError):
        store.start_step(done, Step.INFER, progress=50)
    assert raw_item(aws, record.job_id) == frozen


def test_result_after_cancellation_is_dropped(store: JobStore, aws: AwsStack) -> None:
    record = new_record()
    store.create(record)
    running = store.start_step(record, Step.INFER, progress=50)
    cancelled = store.cancel(TENANT, record.job_id)
    assert cancelled.status is JobStatus.CANCELLED
    assert cancelled.error is not None and cancelled.error.type == "cancelled"
    frozen = raw_item(aws, record.job_id)
    with pytest.raises(StaleWriteError):
        store.mark_completed(running, result=JobResult(text="too late"), usage=Usage())
    assert raw_item(aws, record.job_id) == frozen
    assert store.get(TENANT, record.job_id).status is JobStatus.CANCELLED


@pytest.mark.parametrize("terminal", ["completed", "failed", "cancelled"])
def test_cancel_of_a_terminal_job_conflicts(store: JobStore, aws: AwsStack, terminal: str) -> None:
    record = new_record()
    store.create(record)
    if terminal == "completed":
        store.mark_completed(record, result=JobResult(text="x"), usage=Usage())
    elif terminal == "failed":
        store.mark_failed(record, JobError(type="model_error", message="no"))
    else:
        store.cancel(TENANT, record.job_id)
    frozen = raw_item(aws, record.job_id)
    with pytest.raises(JobConflictError):
        store.cancel(TENANT, record.job_id)
    assert raw_item(aws, record.job_id) == frozen


def test_cancel_of_unknown_job_is_not_found(store: JobStore) -> None:
    with pytest.raises(JobNotFoundError):
        store.cancel(TENANT, "job_unknown")


def test_notification_timing_keeps_the_terminal_state(store: JobStore) -> None:
    record = new_record()
    store.create(record)
    done = store.mark_completed(record, result=JobResult(text="x"), usage=Usage())
    store.record_notification(done, notify_ms=42)
    stored = store.get(TENANT, record.job_id)
    assert stored.status is JobStatus.COMPLETED
    assert stored.timings.notify_ms == 42
    assert stored.timings.total_ms == done.timings.total_ms
