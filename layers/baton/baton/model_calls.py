"""A model call as every caller makes it (a job's hop, a long document's chunk, a background
response): admitted by the provider limiter, timed, metered, and stopped when its job is cancelled."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass
from typing import Any

from baton import llm, telemetry
from baton.clock import now_ms
from baton.errors import JobNotFoundError, ModelError
from baton.limiter import (
    CONFIRM_BEFORE_MS,
    DEFAULT_COMPLETION_TOKENS,
    Deferred,
    Limits,
    ProviderLimiter,
    RateLimitHeaders,
    Ticket,
    WaitInFunction,
    estimate_tokens,
    provider_key,
)
from baton.models import JobStatus, StageCommand
from baton.records import JobRecord
from baton.settings import Settings
from baton.store import JobStore

# A tenant lease outlives the model call it covers by this much (then it returns on its own).
LEASE_MARGIN_MS = 10_000


def provider_limiter(settings: Settings) -> ProviderLimiter | None:
    """The deployment's limiter (None without its table: calls go straight to the provider)."""
    if not settings.limiter_table:
        return None
    return ProviderLimiter(
        settings.limiter_table,
        configured=Limits(settings.provider_requests_per_minute, settings.provider_tokens_per_minute),
        tenant_max_in_flight=settings.tenant_max_in_flight,
    )


def model_headers(record: JobRecord, step_key: str | None = None) -> dict[str, str]:
    """Sent with every model call: the simulator's log (and a proxy's) ties calls to steps."""
    step = step_key or f"{record.job_id}:{record.step_key}"
    return {"X-Baton-Job-Id": record.job_id, "X-Baton-Step-Key": step}


@dataclass(frozen=True)
class ModelCalls:
    settings: Settings
    store: JobStore
    limiter: ProviderLimiter | None

    def admit(
        self,
        command: StageCommand,
        record: JobRecord,
        messages: list[dict[str, Any]],
        parameters: dict[str, Any],
        *,
        lease_id: str | None = None,
    ) -> Ticket | None:
        """Wait for the provider's capacity (RPM/TPM, the tenant's calls in flight), or raise
        Deferred: a ticket for a send slot (at most MAX_WAIT_IN_FUNCTION_S away; `metered` waits
        for it, so the step's own writes before the call take that time, not the slot's).
        `lease_id`: the call's own id (a long document's chunks run concurrently)."""
        if self.limiter is None:
            return None
        turn_ms = command.not_before_ms
        while True:
            try:
                ticket = self.limiter.admit(
                    provider_key(self.settings.openai_base_url, record.model),
                    tenant_id=record.tenant_id,
                    lease_id=lease_id or f"{record.job_id}:{record.version}:{record.depth}",
                    tokens=estimate_tokens(messages, parameters.get("max_tokens")),
                    answer_tokens=parameters.get("max_tokens") or DEFAULT_COMPLETION_TOKENS,
                    now_ms=now_ms(),
                    held_slot_ms=turn_ms,
                    lease_ms=int(self.settings.model_timeout_seconds * 1000) + LEASE_MARGIN_MS,
                )
                break
            except WaitInFunction as near:
                # Its turn is booked (in the tenant's queue): it books the send slot once near it.
                # (No turn: the limits are being learned; it asks again in a moment.)
                turn_ms = near.turn_ms if near.turn_ms is not None else turn_ms
                time.sleep(max(0, near.until_ms - now_ms()) / 1000)
        return ticket

    def complete(
        self,
        record: JobRecord,
        messages: list[dict[str, Any]],
        parameters: dict[str, Any],
        invocation_deadline_ms: int,
        ticket: Ticket | None,
        *,
        step_key: str | None = None,
    ) -> llm.Completion:
        """The chat completion, metered under `ticket`. `step_key`: the call's own step (a long
        document's chunk), else the job's hop."""
        started, outcome = time.monotonic(), "ok"
        try:
            return self.metered(
                ticket,
                lambda: llm.complete(
                    self.settings,
                    model=record.model,
                    messages=messages,
                    parameters=parameters,
                    # Counted when the call leaves, after the waits for capacity and the send
                    # slot (seconds, on a busy stack): a timeout counted from the invocation's
                    # start let a call outlive its invocation, and its retry paid again.
                    timeout=self._timeout_at_send(record, invocation_deadline_ms, ticket),
                    extra_headers=model_headers(record, step_key),
                    # Streamed: a cancel closes the stream, so the provider stops generating.
                    cancelled=lambda: self._is_cancelled(record),
                    prompt_tokens_estimate=estimate_tokens(messages, None) - DEFAULT_COMPLETION_TOKENS,
                ),
                settle=lambda completion: (completion.usage.total_tokens or None, completion.headers),
            )
        except ModelError as error:
            outcome = error.type
            raise
        except Deferred as deferred:
            # A 429 (the call was made and refused), or no call at all: not the endpoint's error.
            refused = isinstance(deferred.__cause__, ModelError) and deferred.__cause__.type == "rate_limited"
            outcome = "rate_limited" if refused else "deferred"
            raise
        except Exception:
            outcome = "error"
            raise
        finally:
            # ModelLatency by model and outcome (the dashboard's model latency widget).
            telemetry.model_call(record.model, (time.monotonic() - started) * 1000, outcome)

    def metered[T](
        self,
        ticket: Ticket | None,
        call: Callable[[], T],
        *,
        settle: Callable[[T], tuple[int | None, dict[str, str]]],
    ) -> T:
        """A provider call under the limiter's ticket, sent at its slot: a 429 defers the command
        (not an attempt), another failure gives the slot back, success settles it with (used
        tokens, headers)."""
        try:
            if ticket is not None:
                self._await_slot(ticket)  # its read may fail: the ticket is abandoned then
            sent_ms = now_ms()
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
                ticket,
                used_tokens=used_tokens,
                headers=RateLimitHeaders.parse(headers),
                now_ms=now_ms(),
                sent_ms=sent_ms,
            )
        return result

    def _await_slot(self, ticket: Ticket) -> None:
        """Sleep until the ticket's send slot (MAX_WAIT_IN_FUNCTION_S away at most, plus a slot
        for each other tenant's call that took one ahead of it: cheaper than a deferral). A ticket
        booked far enough ahead for that reads its slot again CONFIRM_BEFORE_MS before it, beside
        the wait: an answer not back by the slot is not waited for (a call late by more than the
        pace's margin crowds the provider's window), so the read never makes a call late."""
        slot = ticket.slot_ms
        if ticket.confirm and self.limiter is not None:
            limiter = self.limiter
            reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="confirm-slot")
            try:
                while True:
                    early_ms = slot - CONFIRM_BEFORE_MS - now_ms()
                    if early_ms > 0:
                        time.sleep(early_ms / 1000)
                    read = reader.submit(limiter.confirmed_slot, ticket)
                    try:
                        moved = read.result(timeout=max(0, slot - now_ms()) / 1000)
                    except FuturesTimeout:
                        break  # sent at its slot; the read ends on its own
                    if moved == slot:
                        break
                    slot = moved
            finally:
                reader.shutdown(wait=False)
        wait_ms = slot - now_ms()
        if wait_ms > 0:
            time.sleep(wait_ms / 1000)

    def _timeout_at_send(
        self, record: JobRecord, invocation_deadline_ms: int, ticket: Ticket | None
    ) -> float:
        """Below the function's remaining time, and never past the job's own deadline. Too little
        time left (the waits before the call took it) is the invocation's shortage, not the call's
        failure: Deferred, so a fresh invocation makes the call and no attempt is spent. Its turn
        has come, so it keeps it (the slot held as its turn): the fresh invocation takes the next
        free send slot, not a new turn at the end of its tenant's queue, behind its backlog."""
        try:
            budget = llm.model_timeout(self.settings, invocation_deadline_ms - now_ms())
        except ModelError as error:
            raise Deferred(error.message, delay_s=0, slot_ms=ticket.slot_ms if ticket else None) from error
        return min(budget, _seconds_left(record))

    def _is_cancelled(self, record: JobRecord) -> bool:
        try:
            return self.store.get(record.tenant_id, record.job_id).status is JobStatus.CANCELLED
        except JobNotFoundError:
            return True


def _seconds_left(record: JobRecord) -> float:
    return max(1.0, (record.deadline_ms - now_ms()) / 1000)
