"""A job's model call, in and out: the messages it sends, and what the answer does to the job
(completed, tool calls to run, or stopped for review by the depth and token guards). The sync
call (baton.execution) and the background response (baton.background) record answers here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from baton import llm
from baton.blobs import BlobStore
from baton.lifecycle import StageQueues, TerminalEvents
from baton.longdocs import LongDocuments
from baton.messaging import EventPublisher
from baton.models import EventType, Step
from baton.records import JobError, JobRecord, JobResult, ProviderCall, Usage
from baton.settings import Settings
from baton.store import JobStore
from baton.tools import runs_builtin_tools

logger = Logger(child=True)
metrics = Metrics()


@dataclass(frozen=True)
class Completions:
    settings: Settings
    store: JobStore
    blobs: BlobStore
    queues: StageQueues
    events: EventPublisher
    terminal: TerminalEvents
    long_documents: LongDocuments

    def messages(self, record: JobRecord) -> list[dict[str, Any]]:
        """What the job's current hop sends the model."""
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

    def record(
        self, record: JobRecord, messages: list[dict[str, Any]], completion: llm.Completion
    ) -> dict[str, Any]:
        """The answer to the job's hop: the job completes, runs its tool calls one hop deeper, or
        waits for review."""
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
            self.queues.schedule(record, Step.TOOL)
            return {"outcome": "tool_calls", "calls": len(completion.tool_calls or [])}
        record = self.store.mark_completed(record, result=result, usage=usage)
        self.terminal.publish(record)
        logger.info("job completed", extra={"job_id": record.job_id, "usage": usage.model_dump()})
        return {"outcome": "completed", "total_tokens": usage.total_tokens}

    def record_cancelled(self, record: JobRecord, received: llm.Completion) -> dict[str, Any]:
        """The job was cancelled mid-call and the stream closed: its usage counts the tokens that
        were received (the provider bills those), and its view says the call was cancelled."""
        call = ProviderCall(mode="sync", step=record.step_key, status="cancelled", cancelled=True)
        self.store.record_provider_call(record, call, usage=record.usage.plus(received.usage))
        logger.info(
            "model call cancelled with its job",
            extra={"job_id": record.job_id, "received_tokens": received.usage.completion_tokens},
        )
        return {"outcome": "cancelled", "completion_tokens": received.usage.completion_tokens}

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
        self.terminal.publish(record)
        logger.warning(
            "job needs review", extra={"job_id": record.job_id, "reason": reason, "depth": record.depth}
        )
        return {"outcome": "needs_review", "reason": reason}


def _assistant_message(completion: llm.Completion) -> dict[str, Any]:
    return {"role": "assistant", "content": completion.text, "tool_calls": completion.tool_calls}
