"""JobService: the domain behind every handler. Handlers parse and hand off; the logic lives here."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from pydantic import ValidationError

from baton import llm, telemetry
from baton.background import BackgroundInference
from baton.blobs import BlobStore
from baton.clock import now_ms
from baton.deliveries import WebhookService
from baton.egress import check_literal
from baton.errors import (
    DocumentError,
    DocumentTooLongError,
    InvalidRequestError,
    JobConflictError,
    JobNotFoundError,
    ModelError,
    StaleWriteError,
)
from baton.extract import extract_text
from baton.limiter import (
    DEFAULT_COMPLETION_TOKENS,
    Deferred,
    Limits,
    ProviderLimiter,
    RateLimitHeaders,
    Ticket,
    estimate_tokens,
    provider_key,
)
from baton.longdocs import LongDocuments, plan
from baton.messaging import CommandQueue, EventPublisher
from baton.models import (
    TERMINAL_EVENT_FOR_STATUS,
    CreateJobRequest,
    EventType,
    JobStatus,
    LifecycleDetail,
    RerunRequest,
    ReviewRequest,
    StageCommand,
    Step,
    UploadMetadata,
    WebhookSpec,
)
from baton.records import JobError, JobRecord, JobResult, JobView, ProviderCall, Usage
from baton.retries import Failure
from baton.settings import Settings
from baton.store import JobPage, JobStore
from baton.tenants import TenantStore
from baton.tools import ToolContext, expand_tools, run_tool_calls, runs_builtin_tools
from baton.webhook_auth import seal

logger = Logger(child=True)
# Powertools Metrics instances share one metric set; each handler's @log_metrics flushes it.
metrics = Metrics()

POLL_INTERVAL_SECONDS = 0.2
# A tenant lease outlives the model call it covers by this much (then it returns on its own).
LEASE_MARGIN_MS = 10_000
PROGRESS = {Step.EXTRACT: 10, Step.INFER: 50}
PROGRESS_AFTER_EXTRACT = 40
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


class JobService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = JobStore(settings.jobs_table)
        self.tenants = TenantStore(settings.jobs_table)
        self.webhooks = WebhookService(settings, jobs=self.store, tenants=self.tenants)
        self.blobs = BlobStore(settings.bucket)
        self.events = EventPublisher(settings.event_bus)
        self.limiter = (
            ProviderLimiter(
                settings.limiter_table,
                configured=Limits(settings.provider_requests_per_minute, settings.provider_tokens_per_minute),
                tenant_max_in_flight=settings.tenant_max_in_flight,
            )
            if settings.limiter_table
            else None
        )
        self.queues = {
            Step.EXTRACT: CommandQueue(settings.extract_queue_url),
            Step.INFER: CommandQueue(settings.infer_queue_url),
            Step.TOOL: CommandQueue(settings.tool_queue_url),
        }
        self.long_documents = LongDocuments(self)
        self.background = BackgroundInference(self)

    # -- API side ------------------------------------------------------------------------------
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
        record = self._new_record(
            tenant_id,
            job_id=keyed_job_id(tenant_id, idempotency_key) if idempotency_key else new_job_id(),
            request=request,
            document_key=document_key,
            source="api",
            idempotency_key=idempotency_key,
        )
        _check_stored_size(record)
        return self._store_and_start(record)

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
        record = self._new_record(
            tenant_id, job_id=job_id, request=request, document_key=key, source="upload"
        )
        return self._store_and_start(record)

    def _reject_upload(self, tenant_id: str, job_id: str, key: str, error: ValidationError) -> JobRecord:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "metadata"
        placeholder = CreateJobRequest.model_validate(
            {"input": {"prompt": "(rejected upload)"}, "metadata": {"source_key": key[:512]}}
        )
        record = self._new_record(
            tenant_id, job_id=job_id, request=placeholder, document_key=key, source="upload"
        )
        if self.store.create(record):
            self._fail(
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
        self._publish_terminal(record)
        logger.info("job cancelled", extra={"job_id": job_id})
        call = record.provider_call
        if call is not None and call.mode == "background" and call.step == record.step_key:
            # The infer stage (which holds the provider's key) cancels the response at once.
            self.background.wake(record, "cancel")
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
            self._fail(record, "review_rejected", f"rejected in review: {reason}", retryable=False)
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
                self._publish_terminal(completed)
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
        self._schedule(resumed, resumed.resume_step or Step.TOOL)
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
        record = self._new_record(
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
        return self._store_and_start(record)

    def public_view(self, record: JobRecord) -> dict[str, Any]:
        return record.public_view(self._result_url, self.settings.model_prices)

    def view(self, record: JobRecord) -> JobView:
        return record.view(self._result_url, self.settings.model_prices)

    def list_jobs(
        self, tenant_id: str, *, status: JobStatus | None, limit: int, cursor: str | None
    ) -> JobPage:
        return self.store.page(tenant_id, status=status, limit=limit, cursor=cursor)

    def _result_url(self, key: str) -> str:
        return self.blobs.presigned_url(key, expires_in=self.settings.result_url_expiry_seconds)

    # -- stages --------------------------------------------------------------------------------
    def run_extract(self, command: StageCommand) -> dict[str, Any]:
        record = self._runnable(command)
        if record is None:
            return {"outcome": "skipped"}
        record = self.store.start_step(record, Step.EXTRACT, progress=PROGRESS[Step.EXTRACT])
        if record.document_key is None:
            raise InvalidRequestError(f"job {record.job_id} has no document to extract")
        try:
            stored = self.blobs.read(record.document_key, max_bytes=self.settings.max_document_bytes)
            extracted = extract_text(
                stored.data,
                # Documents from POST /v1/documents are named doc_<hex>: their filename (and so
                # their extension) travels as object metadata.
                filename=stored.metadata.get("filename") or record.document_key,
                content_type=stored.content_type,
            )
        except DocumentError as error:
            self._fail(record, error.type, error.message, retryable=False)
            return {"outcome": "failed", "error": error.type}
        try:
            planned = plan(
                record,
                extracted.text,
                context_tokens=self.settings.model_context_tokens,
                document_id=_document_id(record),
            )
        except DocumentTooLongError as error:
            self._fail(record, error.type, error.message, retryable=False)
            return {"outcome": "failed", "error": error.type}
        text_key = self.blobs.extracted_key(record.tenant_id, record.job_id)
        self.blobs.write(text_key, planned.text.encode(), content_type="text/plain; charset=utf-8")
        record = self.store.complete_extract(
            record,
            text_key=text_key,
            progress=PROGRESS_AFTER_EXTRACT,
            document=planned.document,
            chunk_levels=[len(planned.spans)] if planned.spans else None,
        )
        self.events.publish(EventType.STEP_COMPLETED, record, step=Step.EXTRACT.value)
        if planned.spans:
            self.long_documents.fan_out_level0(record, planned.text, planned.spans)
        else:
            self._schedule(record, Step.INFER)
        logger.info(
            "text extracted",
            extra={"job_id": record.job_id, "kind": extracted.kind, **planned.document.model_dump()},
        )
        return {"outcome": "extracted", "chars": extracted.chars, "chunks": planned.document.chunks}

    def run_infer(self, command: StageCommand, *, remaining_ms: int) -> dict[str, Any]:
        invocation_deadline_ms = now_ms() + remaining_ms
        if command.chunk is not None:
            return self.long_documents.run_chunk(command, remaining_ms=remaining_ms)
        if command.poll is not None or command.wake is not None:
            return self.background.resume(command)
        record = self._runnable(command)
        if record is None:
            return {"outcome": "skipped"}
        background = self.settings.inference_mode == "background" and self.background.supported()
        call = record.provider_call
        if background and call is not None and call.mode == "background" and call.step == record.step_key:
            # A retry after a crash (or a copy of the command): the response exists and is paid
            # for. Find it instead of creating another.
            return self.background.resume(command)
        messages = self._messages(record)
        parameters = dict(record.request.get("parameters", {}))
        if parameters.get("tools"):
            parameters["tools"] = expand_tools(parameters["tools"])
        # No capacity at the provider: Deferred (the command comes back later), still pending.
        ticket = self._admit(command, record, messages, parameters)
        record = self.store.start_step(record, Step.INFER, progress=PROGRESS[Step.INFER])
        if background:
            try:
                deadline_ms = invocation_deadline_ms
                started = self.background.start(
                    command, record, messages, parameters, ticket, invocation_deadline_ms=deadline_ms
                )
            except ModelError as error:
                if error.retryable:
                    raise
                self._fail(record, error.type, error.message, retryable=False)
                return {"outcome": "failed", "error": error.type}
            if started is not None:
                return started
        try:
            completion = self._call_model(record, messages, parameters, remaining_ms, ticket)
        except llm.CallCancelled as stopped:
            return self._record_cancelled_call(record, stopped.completion)
        except ModelError as error:
            if error.retryable:
                raise  # the retry policy backs off through SQS and gives up after max attempts
            self._fail(record, error.type, error.message, retryable=False)
            return {"outcome": "failed", "error": error.type}
        return self._record_completion(record, messages, completion)

    def _is_cancelled(self, record: JobRecord) -> bool:
        try:
            return self.store.get(record.tenant_id, record.job_id).status is JobStatus.CANCELLED
        except JobNotFoundError:
            return True

    def _record_cancelled_call(self, record: JobRecord, received: llm.Completion) -> dict[str, Any]:
        """The job was cancelled mid-call and the stream closed: its usage counts the tokens that
        were received (the provider bills those), and its view says the call was cancelled."""
        call = ProviderCall(mode="sync", step=record.step_key, status="cancelled", cancelled=True)
        self.store.record_provider_call(record, call, usage=record.usage.plus(received.usage))
        logger.info(
            "model call cancelled with its job",
            extra={"job_id": record.job_id, "received_tokens": received.usage.completion_tokens},
        )
        return {"outcome": "cancelled", "completion_tokens": received.usage.completion_tokens}

    # What the background mode (baton.background) shares with the sync path.
    def messages(self, record: JobRecord) -> list[dict[str, Any]]:
        return self._messages(record)

    def record_completion(
        self, record: JobRecord, messages: list[dict[str, Any]], completion: llm.Completion
    ) -> dict[str, Any]:
        return self._record_completion(record, messages, completion)

    def fail(self, record: JobRecord, error_type: str, message: str) -> None:
        self._fail(record, error_type, message, retryable=False)

    def defer(self, command: StageCommand, deferred: Deferred) -> dict[str, Any]:
        """Send the command back to its queue, delayed until the provider has room for it (with the
        slot it reserved, if any). A fresh message: waiting spends no receive of the old one, so
        a job that waits through many refills never reaches its DLQ for waiting."""
        self.queues[command.step].send(
            command.model_copy(update={"not_before_ms": deferred.slot_ms}),
            delay_seconds=deferred.delay_seconds,
        )
        metrics.add_metric(name="InferDeferred", unit=MetricUnit.Count, value=1)
        logger.info(
            "model call deferred",
            extra={
                "job_id": command.job_id,
                "reason": deferred.message,
                "delay_s": deferred.delay_seconds,
                "wait_s": round(deferred.delay_s, 3),
            },
        )
        return {"outcome": "deferred", "delay_s": deferred.delay_seconds}

    def _admit(
        self,
        command: StageCommand,
        record: JobRecord,
        messages: list[dict[str, Any]],
        parameters: dict[str, Any],
        *,
        lease_id: str | None = None,
    ) -> Ticket | None:
        """Wait for the provider's capacity (RPM/TPM, the tenant's calls in flight), or raise
        Deferred. `lease_id`: the call's own id (a long document's chunks run concurrently)."""
        if self.limiter is None:
            return None
        ticket = self.limiter.admit(
            provider_key(self.settings.openai_base_url, record.model),
            tenant_id=record.tenant_id,
            lease_id=lease_id or f"{record.job_id}:{record.version}:{record.depth}",
            tokens=estimate_tokens(messages, parameters.get("max_tokens")),
            now_ms=now_ms(),
            held_slot_ms=command.not_before_ms,
            lease_ms=int(self.settings.model_timeout_seconds * 1000) + LEASE_MARGIN_MS,
        )
        wait_ms = ticket.slot_ms - now_ms()
        if wait_ms > 0:
            time.sleep(wait_ms / 1000)  # at most limiter.MAX_WAIT_IN_FUNCTION_S
        return ticket

    def _call_model(
        self,
        record: JobRecord,
        messages: list[dict[str, Any]],
        parameters: dict[str, Any],
        remaining_ms: int,
        ticket: Ticket | None,
        *,
        step_key: str | None = None,
    ) -> llm.Completion:
        started, outcome = time.monotonic(), "ok"
        try:
            return self._metered_completion(
                record, messages, parameters, remaining_ms, ticket, step_key=step_key
            )
        except ModelError as error:
            outcome = error.type
            raise
        except Exception:
            outcome = "error"
            raise
        finally:
            # ModelLatency by model and outcome (the dashboard's model latency widget).
            telemetry.model_call(record.model, (time.monotonic() - started) * 1000, outcome)

    def _metered_completion(
        self,
        record: JobRecord,
        messages: list[dict[str, Any]],
        parameters: dict[str, Any],
        remaining_ms: int,
        ticket: Ticket | None,
        *,
        step_key: str | None,
    ) -> llm.Completion:
        """`step_key`: the call's own step (a long document's chunk), else the job's hop."""
        return self.metered(
            ticket,
            lambda: llm.complete(
                self.settings,
                model=record.model,
                messages=messages,
                parameters=parameters,
                # Below the function's remaining time, and never past the job's own deadline.
                timeout=min(llm.model_timeout(self.settings, remaining_ms), self._seconds_left(record)),
                extra_headers=self.model_headers(record, step_key),
                # Streamed: a cancel closes the stream, so the provider stops generating.
                cancelled=lambda: self._is_cancelled(record),
                prompt_tokens_estimate=estimate_tokens(messages, None) - DEFAULT_COMPLETION_TOKENS,
            ),
            settle=lambda completion: (completion.usage.total_tokens or None, completion.headers),
        )

    @staticmethod
    def model_headers(record: JobRecord, step_key: str | None = None) -> dict[str, str]:
        """Sent with every model call: the simulator's log (and a proxy's) ties calls to steps."""
        step = step_key or f"{record.job_id}:{record.step_key}"
        return {"X-Baton-Job-Id": record.job_id, "X-Baton-Step-Key": step}

    def metered[T](
        self,
        ticket: Ticket | None,
        call: Callable[[], T],
        *,
        settle: Callable[[T], tuple[int | None, dict[str, str]]],
    ) -> T:
        """A provider call under the limiter's ticket: a 429 defers the command (not an attempt),
        another failure gives the slot back, success settles it with (used tokens, headers)."""
        try:
            result = call()
        except ModelError as error:
            if ticket is not None and self.limiter is not None:
                if error.type == "rate_limited":
                    # Not an attempt: wait for the provider, however long, until the job's deadline.
                    raise self.limiter.rate_limited(
                        ticket, headers=RateLimitHeaders.parse(error.headers), now_ms=now_ms()
                    ) from error
                self.limiter.abandon(ticket, now_ms=now_ms())
            raise
        except BaseException:
            if ticket is not None and self.limiter is not None:
                self.limiter.abandon(ticket, now_ms=now_ms())
            raise
        if ticket is not None and self.limiter is not None:
            used_tokens, headers = settle(result)
            self.limiter.settle(
                ticket, used_tokens=used_tokens, headers=RateLimitHeaders.parse(headers), now_ms=now_ms()
            )
        return result

    def _record_completion(
        self, record: JobRecord, messages: list[dict[str, Any]], completion: llm.Completion
    ) -> dict[str, Any]:
        metrics.add_metric(name="ModelTokens", unit=MetricUnit.Count, value=completion.usage.total_tokens)
        usage = record.usage.plus(completion.usage)
        # The token budget guards the agent loop; reading a long document costs what its size
        # says (bounded by BATON_MAX_DOCUMENT_BYTES), and is reported in usage.
        guarded = usage
        if record.chunk_levels and record.depth == 0:
            usage = usage.plus(self.long_documents.usage(record))
        result = self._store_result(record, completion)
        # A stale write below (cancelled or superseded while the model answered) raises
        # StaleWriteError: the retry policy drops the result, never writing it over the new state.
        calls_tools = bool(
            completion.tool_calls
            and completion.finish_reason == "tool_calls"
            and runs_builtin_tools(completion.tool_calls)
        )
        # A job stopped for review keeps its conversation, so an approval continues from here.
        pending = [*messages, _assistant_message(completion)] if calls_tools else None
        budget = self._token_budget(record)
        if guarded.total_tokens > budget:
            return self._needs_review(
                record,
                "token_budget",
                f"the job used {usage.total_tokens} tokens; its budget is {budget}",
                usage=usage,
                result=result,
                pending_conversation=pending,
            )
        if pending is not None:
            limit = self._max_depth(record)
            if record.depth + 1 >= limit:
                return self._needs_review(
                    record,
                    "depth_limit",
                    f"the model kept calling tools; depth {record.depth + 1} reached max_depth {limit}",
                    usage=usage,
                    result=result,
                    pending_conversation=pending,
                )
            self.blobs.write_json(self.blobs.conversation_key(record.tenant_id, record.job_id), pending)
            record = self.store.schedule_tools(record, usage=usage)
            self.events.publish(EventType.STEP_COMPLETED, record, step=Step.INFER.value)
            self._schedule(record, Step.TOOL)
            return {"outcome": "tool_calls", "calls": len(completion.tool_calls or [])}
        record = self.store.mark_completed(record, result=result, usage=usage)
        self._publish_terminal(record)
        logger.info("job completed", extra={"job_id": record.job_id, "usage": usage.model_dump()})
        return {"outcome": "completed", "total_tokens": usage.total_tokens}

    def run_tool(self, command: StageCommand) -> dict[str, Any]:
        """Run the model's tool calls with Baton's safe built-ins, then schedule the next
        inference one hop deeper: choreography, each hop through a queue."""
        record = self._runnable(command)
        if record is None:
            return {"outcome": "skipped"}
        record = self.store.start_step(record, Step.TOOL, progress=record.progress)
        conversation_key = self.blobs.conversation_key(record.tenant_id, record.job_id)
        conversation: list[dict[str, Any]] = self.blobs.read_json(conversation_key)
        calls = conversation[-1].get("tool_calls") or []
        context = ToolContext(
            tenant_id=record.tenant_id,
            job_id=record.job_id,
            document_text=self.blobs.read_text(record.text_key) if record.text_key else None,
            now=datetime.now(tz=UTC),
        )
        conversation.extend(run_tool_calls(calls, context))
        self.blobs.write_json(conversation_key, conversation)
        record = self.store.advance_depth(record)
        self.events.publish(EventType.STEP_COMPLETED, record, step=Step.TOOL.value)
        self._schedule(record, Step.INFER)
        return {"outcome": "tools_ran", "calls": len(calls), "depth": record.depth}

    def ender(self, command: StageCommand) -> Callable[[Failure, int], None]:
        """What the retry policy calls when this command's step cannot succeed."""

        def end(failure: Failure, attempts: int) -> None:
            message = failure.message
            if failure.retryable:
                message = f"{message} (the {command.step.value} step gave up after {attempts} attempts)"
            self.give_up(command, failure.type, message, retryable=bool(failure.retryable))

        return end

    def give_up(self, command: StageCommand, error_type: str, message: str, *, retryable: bool) -> None:
        """End the job of a command whose step cannot succeed (permanent error or retries spent)."""
        try:
            record = self.store.get(command.tenant_id, command.job_id)
        except JobNotFoundError:
            return
        if record.is_settled or record.version != command.version:
            return
        self._fail(record, error_type, message, retryable=retryable)

    def fail_dead_lettered(self, command: StageCommand, *, attempts: int, archive_id: str) -> str:
        """A command of this job reached its step's DLQ: the job fails (its webhook still fires)
        unless it already ended or moved on. Returns what happened (baton.deadletters.Outcome)."""
        try:
            record = self.store.get(command.tenant_id, command.job_id)
        except JobNotFoundError:
            return "job_not_found"
        if record.is_settled:
            ended_by_us = record.error is not None and record.error.type == "dead_lettered"
            return "job_failed" if ended_by_us else "job_already_ended"
        if record.version != command.version or record.depth != command.depth:
            return "stale_command"
        self._fail(
            record,
            "dead_lettered",
            f"the {command.step.value} step failed {attempts} times (crash or timeout); "
            f"its message is archived as dead letter {archive_id}",
            retryable=False,
        )
        return "job_failed"

    def fail_overdue(self, now: int, *, limit: int, keep_going: Callable[[], bool] = lambda: True) -> int:
        """Jobs past their deadline end as failed with error.type timeout: at most `limit` per run,
        oldest deadline first. Each job visited leaves the open-jobs index (failed, or found ended or
        expired), so the next run starts where this one stopped and nothing is skipped."""
        failed = 0
        for tenant_id, job_id in self.store.overdue(now, limit=limit):
            if not keep_going():
                break
            try:
                record = self.store.get(tenant_id, job_id)
            except JobNotFoundError:
                self.store.leave_open_index(tenant_id, job_id)  # expired: TTL may lag for days
                continue
            if record.is_terminal or record.deadline_ms >= now:
                continue
            if record.status is JobStatus.NEEDS_REVIEW:
                self._fail(
                    record,
                    "review_expired",
                    "nobody approved or rejected the job within the review window",
                    retryable=False,
                )
            else:
                self._fail(record, "timeout", "the job ran past its timeout_seconds", retryable=False)
            failed += 1
        return failed

    def notify(self, detail: LifecycleDetail) -> dict[str, Any]:
        """A terminal event becomes a webhook delivery (attempted from the delivery queue)."""
        if not detail.status.is_settled or detail.job is None:
            return {"outcome": "ignored"}
        try:
            record = self.store.get(detail.tenant_id, detail.job_id)
        except JobNotFoundError:
            logger.warning("notification for a job that no longer exists", extra={"job_id": detail.job_id})
            return {"outcome": "gone"}
        return self.webhooks.intake(record, detail.status, detail.job)

    # -- helpers -------------------------------------------------------------------------------
    def _new_record(
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

    def _store_and_start(self, record: JobRecord) -> JobRecord:
        """Create the job and hand it to its first stage. A retry whose job already exists (the
        hand-off failed after the write) hands it off again while it is still pending: the stage's
        idempotency absorbs a duplicate command, and lifecycle events are at-least-once anyway."""
        if self.store.create(record):
            self._start(record)
            return record
        existing = self.store.get(record.tenant_id, record.job_id)
        if existing.status is JobStatus.PENDING and not existing.handed_off:
            logger.info(
                "job exists but may not have started; handing it off again", extra={"job_id": record.job_id}
            )
            self._start(existing)
        return existing

    def _start(self, record: JobRecord) -> None:
        self.events.publish(EventType.ACCEPTED, record)
        metrics.add_metric(name="JobsAccepted", unit=MetricUnit.Count, value=1)
        self._schedule(record, Step.EXTRACT if record.document_key else Step.INFER)
        self.store.mark_handed_off(record)
        logger.info(
            "job accepted",
            extra={"job_id": record.job_id, "tenant_id": record.tenant_id, "source": record.source},
        )

    def _schedule(self, record: JobRecord, step: Step) -> None:
        command = StageCommand(
            job_id=record.job_id,
            tenant_id=record.tenant_id,
            step=step,
            version=record.version,
            depth=record.depth,
        )
        self.queues[step].send(command)

    def _runnable(self, command: StageCommand) -> JobRecord | None:
        """The job if this command may still act on it; None (logged) for stale or finished work."""
        try:
            record = self.store.get(command.tenant_id, command.job_id)
        except JobNotFoundError:
            logger.warning("command for an unknown or expired job dropped", extra=command.model_dump())
            return None
        if record.is_settled or record.version != command.version or record.depth != command.depth:
            logger.info(
                "stale command dropped",
                extra={
                    **command.model_dump(),
                    "status": record.status.value,
                    "current_version": record.version,
                },
            )
            if record.is_settled and _ended_by(record, command):
                self._announce_again(record)
            return None
        if now_ms() > record.deadline_ms:
            self._fail(record, "timeout", "the job ran past its timeout_seconds", retryable=False)
            return None
        return record

    def _messages(self, record: JobRecord) -> list[dict[str, Any]]:
        if record.depth > 0:
            # Later hops continue the stored conversation (prompt, tool calls, tool results).
            conversation: list[dict[str, Any]] = self.blobs.read_json(
                self.blobs.conversation_key(record.tenant_id, record.job_id)
            )
            return conversation
        if record.chunk_levels:
            return self.long_documents.final_messages(record)
        job_input = record.request["input"]
        document_text = self.blobs.read_text(record.text_key) if record.text_key else None
        if "prompt" in job_input:
            content = job_input["prompt"]
            if document_text:
                content = f"{content}\n\nDocument:\n{document_text}"
            return [{"role": "user", "content": content}]
        messages = [dict(message) for message in job_input["messages"]]
        if document_text:
            messages.append({"role": "user", "content": f"Document:\n{document_text}"})
        return messages

    def _store_result(self, record: JobRecord, completion: llm.Completion) -> JobResult:
        result = JobResult(
            text=completion.text, finish_reason=completion.finish_reason, tool_calls=completion.tool_calls
        )
        encoded = result.model_dump_json().encode()
        if len(encoded) <= self.settings.inline_result_max_bytes:
            return result
        key = self.blobs.result_key(record.tenant_id, record.job_id)
        self.blobs.write(key, encoded, content_type="application/json")
        preview = (completion.text or "")[:1000]
        return JobResult(
            text=preview, finish_reason=completion.finish_reason, result_key=key, result_bytes=len(encoded)
        )

    @staticmethod
    def _seconds_left(record: JobRecord) -> float:
        return max(1.0, (record.deadline_ms - now_ms()) / 1000)

    def _max_depth(self, record: JobRecord) -> int:
        # A client may lower the guard, never raise it above the deployment's limit; a reviewer
        # may raise it up to the review cap.
        if record.approved_max_depth is not None:
            return min(record.approved_max_depth, self.settings.review_max_depth)
        requested = record.request.get("parameters", {}).get("max_depth")
        return min(requested or self.settings.max_depth, self.settings.max_depth)

    def _token_budget(self, record: JobRecord) -> int:
        if record.approved_max_total_tokens is not None:
            return min(record.approved_max_total_tokens, self.settings.review_max_total_tokens)
        requested = record.request.get("parameters", {}).get("max_total_tokens")
        return min(requested or self.settings.max_total_tokens, self.settings.max_total_tokens)

    def _needs_review(
        self,
        record: JobRecord,
        reason: str,
        message: str,
        *,
        usage: Usage,
        result: JobResult,
        pending_conversation: list[dict[str, Any]] | None,
    ) -> dict[str, Any]:
        if pending_conversation is not None:
            self.blobs.write_json(
                self.blobs.conversation_key(record.tenant_id, record.job_id), pending_conversation
            )
        record = self.store.mark_needs_review(
            record,
            JobError(type=reason, message=message, retryable=False),
            usage=usage,
            result=result,
            resume_step=Step.TOOL if pending_conversation is not None else None,
            review_window_ms=self.settings.review_window_ms,
        )
        self._publish_terminal(record)
        logger.warning(
            "job needs review", extra={"job_id": record.job_id, "reason": reason, "depth": record.depth}
        )
        return {"outcome": "needs_review", "reason": reason}

    def _fail(self, record: JobRecord, error_type: str, message: str, *, retryable: bool) -> None:
        # Only a job still at the state it was read in (same version) fails; one waiting for
        # review fails only from review (rejected or expired).
        from_statuses = (
            (JobStatus.NEEDS_REVIEW,)
            if record.status is JobStatus.NEEDS_REVIEW
            else (JobStatus.PENDING, JobStatus.PROCESSING)
        )
        try:
            failed = self.store.mark_failed(
                record,
                JobError(type=error_type, message=message, retryable=retryable),
                from_statuses=from_statuses,
            )
        except StaleWriteError:
            logger.info("job already finished; failure not recorded", extra={"job_id": record.job_id})
            return
        self._publish_terminal(failed)
        logger.warning(
            "job failed", extra={"job_id": record.job_id, "error_type": error_type, "reason": message}
        )

    def _announce_again(self, record: JobRecord) -> None:
        """This very step ended the job, and its command is back: the invocation that wrote the
        terminal state did not finish (it died, or PutEvents failed and it raised), so its terminal
        event may never have been published, and without it no webhook fires. Publish it again:
        lifecycle events are at-least-once, and notify delivers once per (job, status).
        (A command whose step finished is answered by its idempotency record and never gets here.)"""
        logger.info("terminal event published again", extra={"job_id": record.job_id})
        self.events.publish(
            TERMINAL_EVENT_FOR_STATUS[record.status], record, job_view=self.public_view(record)
        )

    def _publish_terminal(self, record: JobRecord) -> None:
        self.events.publish(
            TERMINAL_EVENT_FOR_STATUS[record.status], record, job_view=self.public_view(record)
        )
        # One series per terminal state: JobsCompleted, JobsFailed, JobsCancelled, JobsNeedsReview.
        name = "Jobs" + record.status.value.title().replace("_", "")
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)
        telemetry.job_settled(record, record.cost(self.settings.model_prices))


def _ended_by(record: JobRecord, command: StageCommand) -> bool:
    """Whether the terminal job was last at this command's step (same version and depth)."""
    return (
        command.chunk is None
        and record.version == command.version
        and record.depth == command.depth
        and record.current_step == command.step
    )


def _document_id(record: JobRecord) -> str | None:
    document = record.request.get("document") or {}
    return document.get("id") or document.get("s3_uri") or record.document_key


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


def _assistant_message(completion: llm.Completion) -> dict[str, Any]:
    return {"role": "assistant", "content": completion.text, "tool_calls": completion.tool_calls}
