"""The job steps behind the SQS stages: extract (document -> text), infer (the model call), tool
(the model's tool calls). Each acts only on a command that still fits its job (CommandFence)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from baton import llm
from baton.background import BackgroundInference
from baton.blobs import BlobStore
from baton.clock import now_ms
from baton.completions import Completions
from baton.errors import (
    DocumentError,
    DocumentTooLongError,
    InvalidRequestError,
    JobNotFoundError,
    ModelError,
)
from baton.extract import extract_text
from baton.failures import JobFailures
from baton.lifecycle import StageQueues, TerminalEvents
from baton.limiter import Deferred
from baton.longdocs import LongDocuments, fan_out_level0, plan
from baton.messaging import EventPublisher
from baton.model_calls import ModelCalls
from baton.models import EventType, StageCommand, Step
from baton.records import JobRecord
from baton.settings import Settings
from baton.store import JobStore
from baton.tools import ToolContext, expand_tools, run_tool_calls

logger = Logger(child=True)
metrics = Metrics()

PROGRESS = {Step.EXTRACT: 10, Step.INFER: 50}
PROGRESS_AFTER_EXTRACT = 40


@dataclass(frozen=True)
class CommandFence:
    """Whether a stage command may still act on its job: a stale or finished one is dropped, and
    one whose job ran past its deadline fails the job."""

    store: JobStore
    failures: JobFailures
    terminal: TerminalEvents

    def runnable(self, command: StageCommand) -> JobRecord | None:
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
                self.terminal.announce_again(record)
            return None
        if now_ms() > record.deadline_ms:
            self.failures.fail(record, "timeout", "the job ran past its timeout_seconds")
            return None
        return record


@dataclass(frozen=True)
class ExtractStage:
    settings: Settings
    store: JobStore
    blobs: BlobStore
    queues: StageQueues
    events: EventPublisher
    fence: CommandFence
    failures: JobFailures

    def run(self, command: StageCommand) -> dict[str, Any]:
        record = self.fence.runnable(command)
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
            self.failures.fail(record, error.type, error.message)
            return {"outcome": "failed", "error": error.type}
        try:
            planned = plan(
                record,
                extracted.text,
                context_tokens=self.settings.model_context_tokens,
                document_id=_document_id(record),
            )
        except DocumentTooLongError as error:
            self.failures.fail(record, error.type, error.message)
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
            fan_out_level0(self.blobs, self.queues, record, planned.text, planned.spans)
        else:
            self.queues.schedule(record, Step.INFER)
        logger.info(
            "text extracted",
            extra={"job_id": record.job_id, "kind": extracted.kind, **planned.document.model_dump()},
        )
        return {"outcome": "extracted", "chars": extracted.chars, "chunks": planned.document.chunks}


@dataclass(frozen=True)
class InferStage:
    settings: Settings
    store: JobStore
    queues: StageQueues
    fence: CommandFence
    failures: JobFailures
    model_calls: ModelCalls
    completions: Completions
    long_documents: LongDocuments
    background: BackgroundInference

    def run(self, command: StageCommand, *, remaining_ms: int) -> dict[str, Any]:
        invocation_deadline_ms = now_ms() + remaining_ms
        if command.chunk is not None:
            chunk_of = self.fence.runnable(command)
            if chunk_of is None:
                return {"outcome": "skipped"}
            return self.long_documents.run_chunk(
                command, chunk_of, invocation_deadline_ms=invocation_deadline_ms
            )
        if command.poll is not None or command.wake is not None:
            return self.background.resume(command)
        record = self.fence.runnable(command)
        if record is None:
            return {"outcome": "skipped"}
        background = self.settings.inference_mode == "background" and self.background.supported()
        call = record.provider_call
        if background and call is not None and call.mode == "background" and call.step == record.step_key:
            # A retry after a crash (or a copy of the command): the response exists and is paid
            # for. Find it instead of creating another.
            return self.background.resume(command)
        messages = self.completions.messages(record)
        parameters = dict(record.request.get("parameters", {}))
        if parameters.get("tools"):
            parameters["tools"] = expand_tools(parameters["tools"])
        # No capacity at the provider: Deferred (the command comes back later), still pending.
        ticket = self.model_calls.admit(command, record, messages, parameters)
        record = self.store.start_step(record, Step.INFER, progress=PROGRESS[Step.INFER])
        if background:
            try:
                started = self.background.start(
                    command,
                    record,
                    messages,
                    parameters,
                    ticket,
                    invocation_deadline_ms=invocation_deadline_ms,
                )
            except ModelError as error:
                if error.retryable:
                    raise
                self.failures.fail(record, error.type, error.message)
                return {"outcome": "failed", "error": error.type}
            if started is not None:
                return started
        try:
            completion = self.model_calls.complete(
                record, messages, parameters, invocation_deadline_ms, ticket
            )
        except llm.CallCancelled as stopped:
            return self.completions.record_cancelled(record, stopped.completion)
        except ModelError as error:
            if error.retryable:
                raise  # the retry policy backs off through SQS and gives up after max attempts
            self.failures.fail(record, error.type, error.message)
            return {"outcome": "failed", "error": error.type}
        return self.completions.record(record, messages, completion)

    def defer(self, command: StageCommand, deferred: Deferred) -> dict[str, Any]:
        """Send the command back to its queue, delayed until the provider has room for it (with the
        slot it reserved, if any). A fresh message: waiting spends no receive of the old one, so
        a job that waits through many refills never reaches its DLQ for waiting."""
        self.queues.send(
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


@dataclass(frozen=True)
class ToolStage:
    store: JobStore
    blobs: BlobStore
    queues: StageQueues
    events: EventPublisher
    fence: CommandFence
    failures: JobFailures

    def run(self, command: StageCommand) -> dict[str, Any]:
        """Run the model's tool calls with Baton's safe built-ins, then schedule the next
        inference one hop deeper: choreography, each hop through a queue."""
        record = self.fence.runnable(command)
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
        self.queues.schedule(record, Step.INFER)
        return {"outcome": "tools_ran", "calls": len(calls), "depth": record.depth}


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
