"""Intake: jobs come in (the API, an upload, a batch line, a re-run), are read, waited on,
cancelled and reviewed. Everything the jobs API and the ingest stage do with a job."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from pydantic import ValidationError

from baton.blobs import BlobStore
from baton.clock import now_ms
from baton.egress import check_literal
from baton.errors import InvalidRequestError, JobConflictError, StaleWriteError
from baton.failures import JobFailures
from baton.lifecycle import JobViews, StageQueues, TerminalEvents, command_for
from baton.messaging import EventPublisher
from baton.models import (
    CreateJobRequest,
    EventType,
    JobStatus,
    RerunRequest,
    ReviewRequest,
    Step,
    UploadMetadata,
    WebhookSpec,
)
from baton.records import JobRecord, JobView
from baton.settings import Settings
from baton.store import JobPage, JobStore
from baton.tenants import TenantStore
from baton.webhook_auth import seal

logger = Logger(child=True)
metrics = Metrics()

POLL_INTERVAL_SECONDS = 0.2
# What the stored request may take of the job's 400 KB DynamoDB item; the rest is for the inline
# result (BATON_INLINE_RESULT_MAX_BYTES, 32 KB by default), metadata and bookkeeping.
MAX_STORED_REQUEST_BYTES = 256_000


def new_job_id() -> str:
    return f"job_{uuid.uuid4().hex}"


def keyed_job_id(tenant_id: str, idempotency_key: str) -> str:
    """With an Idempotency-Key the job id is derived from it, so a retried submission whose first
    attempt stored the job but failed to hand it off finds that job instead of orphaning it."""
    return "job_" + hashlib.sha256(f"{tenant_id}\n{idempotency_key}".encode()).hexdigest()[:32]


def upload_job_id(bucket: str, key: str, etag: str) -> str:
    """The job an upload becomes. S3 event ids are not unique on every endpoint (facts.md), so the
    id derives from bucket + key + ETag: a replayed event finds the same job."""
    digest = hashlib.sha256(f"{bucket}/{key}/{etag.strip(chr(34))}".encode()).hexdigest()[:32]
    return f"job_{digest}"


@dataclass(frozen=True)
class JobIntake:
    settings: Settings
    store: JobStore
    tenants: TenantStore
    blobs: BlobStore
    queues: StageQueues
    events: EventPublisher
    terminal: TerminalEvents
    failures: JobFailures

    @property
    def views(self) -> JobViews:
        return self.terminal.views

    # -- jobs in ------------------------------------------------------------------------------
    def accept(
        self, tenant_id: str, request: CreateJobRequest, *, idempotency_key: str | None = None
    ) -> JobRecord:
        """Validate what pydantic cannot, store the job, hand it to its first stage."""
        if request.input.text_length() > self.settings.max_prompt_chars:
            raise InvalidRequestError(
                f"input is longer than {self.settings.max_prompt_chars} characters", field="input"
            )
        self.check_webhook(request.webhook)
        document_key = None
        if request.document is not None:
            document_key = self._document_key(tenant_id, request)
        record = self.new_record(
            tenant_id,
            job_id=keyed_job_id(tenant_id, idempotency_key) if idempotency_key else new_job_id(),
            request=request,
            document_key=document_key,
            source="api",
            idempotency_key=idempotency_key,
        )
        _check_stored_size(record)
        return self.store_and_start(record)

    def accept_upload(self, bucket: str, raw_key: str, etag: str | None) -> JobRecord | None:
        """An object created under uploads/<tenant>/ becomes a job; replays of the event are no-ops."""
        key = unquote_plus(raw_key)
        parts = key.split("/")
        if len(parts) < 3 or parts[0] != "uploads" or not parts[2]:
            logger.warning("ignoring object outside uploads/<tenant>/", extra={"key": key})
            return None
        tenant_id = parts[1]
        if not self.tenants.exists(tenant_id):
            raise InvalidRequestError(f"upload {key}: tenant {tenant_id!r} does not exist")
        object_metadata, current_etag = self.blobs.head(key)
        # moto names it eTag, not etag (facts.md): fall back to the object's own ETag.
        job_id = upload_job_id(bucket, key, etag or current_etag)
        try:
            metadata = UploadMetadata.model_validate(object_metadata)
            body: dict[str, Any] = {
                "input": {"prompt": metadata.prompt},
                "metadata": {"source_key": key[:512]},
            }
            if metadata.model:
                body["model"] = metadata.model
            if metadata.webhook_url:
                body["webhook"] = {"url": str(metadata.webhook_url)}
            request = CreateJobRequest.model_validate(body)
        except ValidationError as error:
            # The uploader polls this job id: it must end, failed, naming the bad metadata.
            return self._reject_upload(tenant_id, job_id, key, error)
        record = self.new_record(tenant_id, job_id=job_id, request=request, document_key=key, source="upload")
        return self.store_and_start(record, replays_expected=True)

    def _reject_upload(self, tenant_id: str, job_id: str, key: str, error: ValidationError) -> JobRecord:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "metadata"
        placeholder = CreateJobRequest.model_validate(
            {"input": {"prompt": "(rejected upload)"}, "metadata": {"source_key": key[:512]}}
        )
        record = self.new_record(
            tenant_id, job_id=job_id, request=placeholder, document_key=key, source="upload"
        )
        if self.store.create(record):
            self.failures.fail(
                record,
                "invalid_request",
                f"upload metadata x-amz-meta-{field}: {first['msg']}",
                retryable=False,
            )
        return self.store.get(tenant_id, job_id)

    def check_webhook(self, webhook: WebhookSpec | None) -> None:
        """Address literals the egress rule refuses answer 422 on submit (names: at delivery)."""
        if webhook is None or self.settings.webhook_allow_private_networks:
            return
        check_literal(str(webhook.url.host or ""), field="webhook.url")
        token_url = webhook.auth.token_url if webhook.auth else None
        if token_url is not None:
            check_literal(str(token_url.host or ""), field="webhook.auth.token_url")

    def get(self, tenant_id: str, job_id: str) -> JobRecord:
        return self.store.get(tenant_id, job_id)

    def wait(self, tenant_id: str, job_id: str, seconds: float, *, until_terminal: bool) -> JobRecord:
        """Long-poll: return as soon as the job changes (or is terminal), or when time is up."""
        deadline = time.monotonic() + min(seconds, self.settings.max_wait_seconds)
        first = record = self.store.get(tenant_id, job_id)
        while not record.is_settled and time.monotonic() < deadline:
            if not until_terminal and record.updated_ms != first.updated_ms:
                break
            time.sleep(POLL_INTERVAL_SECONDS)
            record = self.store.get(tenant_id, job_id)
        return record

    def cancel(self, tenant_id: str, job_id: str) -> JobRecord:
        record = self.store.cancel(tenant_id, job_id)
        self.terminal.publish(record)
        logger.info("job cancelled", extra={"job_id": job_id})
        call = record.provider_call
        if call is not None and call.mode == "background" and call.step == record.step_key:
            # The infer stage (which holds the provider's key) cancels the response at once.
            self.queues.wake(record, "cancel")
        return record

    # -- review and re-run ---------------------------------------------------------------------
    def review(self, tenant_id: str, job_id: str, decision: ReviewRequest) -> JobRecord:
        """Resolve a job in needs_review: approve (it runs on as version + 1, with limits raised up
        to the review caps) or reject (failed, review_rejected). Any other state: 409."""
        record = self.store.get(tenant_id, job_id)
        if record.status is not JobStatus.NEEDS_REVIEW:
            raise JobConflictError(f"job {job_id} is {record.status.value}, not needs_review")
        if decision.decision == "reject":
            reason = decision.reason or "no reason given"
            self.failures.fail(record, "review_rejected", f"rejected in review: {reason}", retryable=False)
        else:
            self._approve(record, decision)
        return self.store.get(tenant_id, job_id)

    def _approve(self, record: JobRecord, decision: ReviewRequest) -> None:
        caps = {
            "max_depth": self.settings.review_max_depth,
            "max_total_tokens": self.settings.review_max_total_tokens,
        }
        for field, cap in caps.items():
            asked = getattr(decision, field)
            if asked is not None and asked > cap:
                raise InvalidRequestError(f"{field}: at most {cap} (the review cap)", field=field)
        max_depth = decision.max_depth or self.settings.review_max_depth
        max_total_tokens = decision.max_total_tokens or self.settings.review_max_total_tokens
        try:
            if record.resume_step is None:
                # The budget guard stopped a final answer: approving it accepts the answer.
                completed = self.store.complete_after_review(record)
                self.terminal.publish(completed)
                return
            timeout = record.request.get("parameters", {}).get("timeout_seconds")
            resumed = self.store.resume_after_review(
                record,
                max_depth=max_depth,
                max_total_tokens=max_total_tokens,
                deadline_ms=now_ms() + (timeout or self.settings.default_timeout_seconds) * 1000,
            )
        except StaleWriteError:
            raise JobConflictError(f"job {record.job_id} changed while it was being reviewed") from None
        self.queues.schedule(resumed, resumed.resume_step or Step.TOOL)
        logger.info("job approved in review", extra={"job_id": record.job_id, "version": resumed.version})

    def rerun(self, tenant_id: str, job_id: str, overrides: RerunRequest) -> JobRecord:
        """The stored job again as a new job (`rerun_of` says which); the original never changes."""
        original = self.store.get(tenant_id, job_id)
        body = dict(original.request)
        given = overrides.model_dump(mode="json", exclude_none=True, exclude={"parameters", "webhook"})
        body.update(given)
        if overrides.parameters is not None:
            body["parameters"] = {
                **body.get("parameters", {}),
                **overrides.parameters.model_dump(mode="json", exclude_unset=True),
            }
        if overrides.webhook is not None:
            body["webhook"] = overrides.webhook.model_dump(mode="json", exclude_none=True)
        try:
            request = CreateJobRequest.model_validate(body)
        except ValidationError as error:
            first = error.errors()[0]
            field = ".".join(str(part) for part in first["loc"]) or "body"
            raise InvalidRequestError(f"{field}: {first['msg']}", field=field) from None
        # The original's document is read again where it is stored (no second existence check:
        # if it expired meanwhile, extract fails the new job naming it).
        record = self.new_record(
            tenant_id,
            job_id=new_job_id(),
            request=request,
            document_key=original.document_key,
            source="rerun",
        )
        # Without a new webhook the original's is kept as stored (its credentials stay sealed).
        kept = {} if overrides.webhook is not None else {"webhook": original.webhook}
        record = record.model_copy(update={"rerun_of": original.job_id, **kept})
        _check_stored_size(record)
        return self.store_and_start(record)

    def public_view(self, record: JobRecord) -> dict[str, Any]:
        return self.views.public_view(record)

    def view(self, record: JobRecord) -> JobView:
        return self.views.view(record)

    def list_jobs(
        self, tenant_id: str, *, status: JobStatus | None, limit: int, cursor: str | None
    ) -> JobPage:
        return self.store.page(tenant_id, status=status, limit=limit, cursor=cursor)

    # -- storing and starting -------------------------------------------------------------------------------
    def new_record(
        self,
        tenant_id: str,
        *,
        job_id: str,
        request: CreateJobRequest,
        document_key: str | None,
        source: str,
        idempotency_key: str | None = None,
    ) -> JobRecord:
        now = now_ms()
        timeout = request.parameters.timeout_seconds or self.settings.default_timeout_seconds
        return JobRecord(
            job_id=job_id,
            tenant_id=tenant_id,
            model=request.model or self.settings.model,
            created_ms=now,
            updated_ms=now,
            expires_at=now // 1000 + self.settings.retention_days * 86_400,
            deadline_ms=now + timeout * 1000,
            metadata=dict(request.metadata),
            request=request.model_dump(mode="json", exclude={"webhook"}, exclude_none=True),
            webhook=self.stored_webhook(tenant_id, request.webhook),
            document_key=document_key,
            source=source,
            idempotency_key=idempotency_key,
        )

    def stored_webhook(self, tenant_id: str, webhook: WebhookSpec | None) -> dict[str, Any] | None:
        """The webhook as stored (a job's or a batch's): its credentials sealed with KMS, never in
        plain text."""
        if webhook is None:
            return None
        stored: dict[str, Any] = {"url": str(webhook.url)}
        if webhook.auth is not None:
            stored["auth_sealed"] = seal(
                webhook.auth, key_id=self.settings.webhook_auth_key_id, tenant_id=tenant_id
            )
        return stored

    def _document_key(self, tenant_id: str, request: CreateJobRequest) -> str:
        document = request.document
        assert document is not None
        if document.id is not None:
            key, field = self.blobs.document_key(tenant_id, document.id), "document.id"
        else:
            key, field = self.blobs.key_from_uri(tenant_id, str(document.s3_uri)), "document.s3_uri"
        if not self.blobs.exists(key):
            raise InvalidRequestError(f"{field}: no such document", field=field)
        return key

    def store_and_start(self, record: JobRecord, *, replays_expected: bool = False) -> JobRecord:
        """Create the job and hand it to its first stage. A retry whose job already exists (the
        hand-off may have failed after the write) hands it off again while it is still pending:
        the stage's idempotency absorbs a duplicate command, and lifecycle events are at-least-once
        anyway. Where the same submission is expected again after a success (an S3 event delivered
        twice), the hand-off is marked on the job and a replay finds it done. Elsewhere it is not:
        the mark cost every job a write, for a retry that comes only after a failure (a replayed
        Idempotency-Key is answered from its idempotency record without coming here)."""
        if self.store.create(record):
            self._start(record, mark=replays_expected)
            return record
        existing = self.store.get(record.tenant_id, record.job_id)
        if existing.status is JobStatus.PENDING and not existing.handed_off:
            logger.info(
                "job exists but may not have started; handing it off again", extra={"job_id": record.job_id}
            )
            self._start(existing, mark=replays_expected)
        return existing

    def store_and_start_many(self, records: list[JobRecord]) -> list[JobRecord]:
        """Create many jobs (one conditional write each) and hand them off in bulk: ten Job
        Accepted events per PutEvents call and ten commands per SQS request (a batch slice's
        lines). No job is marked handed off: the caller records the hand-off of the whole group,
        and until it has, a retry hands off again every job of the group still pending (the
        stage's idempotency absorbs a duplicate command). Returns the jobs handed off."""
        to_start: list[JobRecord] = []
        for record in records:
            if self.store.create(record):
                to_start.append(record)
                continue
            existing = self.store.get(record.tenant_id, record.job_id)
            if existing.status is JobStatus.PENDING:
                to_start.append(existing)
        if not to_start:
            return to_start
        self.events.publish_many(EventType.ACCEPTED, to_start)
        metrics.add_metric(name="JobsAccepted", unit=MetricUnit.Count, value=len(to_start))
        for step in (Step.EXTRACT, Step.INFER):
            group = [record for record in to_start if (step is Step.EXTRACT) == bool(record.document_key)]
            if group:
                self.queues.send_many(step, [command_for(record, step) for record in group])
        logger.info("jobs accepted", extra={"jobs": len(to_start), "source": to_start[0].source})
        return to_start

    def _start(self, record: JobRecord, *, mark: bool) -> None:
        self.events.publish(EventType.ACCEPTED, record)
        metrics.add_metric(name="JobsAccepted", unit=MetricUnit.Count, value=1)
        self.queues.schedule(record, Step.EXTRACT if record.document_key else Step.INFER)
        if mark:
            self.store.mark_handed_off(record)
        logger.info(
            "job accepted",
            extra={"job_id": record.job_id, "tenant_id": record.tenant_id, "source": record.source},
        )


def _check_stored_size(record: JobRecord) -> None:
    """A job is one DynamoDB item (400 KB at most, or the write fails with a 500). The request is
    stored in it as escaped JSON, so a prompt within BATON_MAX_PROMPT_CHARS can still be too big:
    non-ASCII characters take 6 bytes each (\\uXXXX). Refuse it up front with a 422."""
    stored = len(record.to_item()["request"])
    if stored <= MAX_STORED_REQUEST_BYTES:
        return
    input_bytes = len(json.dumps(record.request["input"], separators=(",", ":")))
    field = "input" if input_bytes > MAX_STORED_REQUEST_BYTES // 2 else "body"
    raise InvalidRequestError(
        f"{field} is too large to store: {stored} bytes as JSON (non-ASCII characters count 6 "
        f"bytes each); the limit is {MAX_STORED_REQUEST_BYTES}",
        field=field,
    )
