"""InferenceMode=background: no function waits while the model thinks.

The infer step creates a background response (Responses API), stores its id on the job (one
conditional transaction, before anything else can fail) and returns. The step resumes from a
delayed poll command (each poll one GET; delays from BackgroundPollSchedule, at most SQS's 15
minutes) or from the provider's webhook, which enqueues a wake-up command at once. Whichever
arrives first records the answer through the same conditional writes as sync mode; the other
finds the job advanced. A retry after a crash finds the stored id instead of paying for another
response; a cancelled or timed-out job has its response cancelled at the provider.

A background response counts against the tenant's TenantMaxInFlight until its step ends: the
call's lease is kept past the create (until the job's deadline at most) and released by the poll,
webhook or cancel that ends the step.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from baton import responses
from baton.clock import now_ms
from baton.errors import JobNotFoundError, ModelError
from baton.limiter import Deferred, Ticket
from baton.model_calls import model_headers
from baton.models import JobStatus, StageCommand
from baton.records import JobRecord, ProviderCall

if TYPE_CHECKING:
    from baton.completions import Completions
    from baton.failures import JobFailures
    from baton.lifecycle import StageQueues
    from baton.model_calls import ModelCalls
    from baton.settings import Settings
    from baton.store import JobStore

logger = Logger(child=True)
metrics = Metrics()

# A lease outlives the job's deadline by this much: the poll after the deadline ends it first.
LEASE_MARGIN_MS = 60_000
# Endpoints found without background responses in this process: their calls go sync at once.
_unsupported: set[str] = set()
# Invocation time a create leaves for storing its response id: above the slowest id write seen in
# background chaos at load 12-21 (3.8 s; 5.4 s before, with the limiter's writes still in between).
# A create refused for it is deferred to a fresh invocation, not failed. Not more: under that load
# 10 s (plus the create's 3) left no invocation of a 20 s function time to create for minutes.
ID_WRITE_RESERVE_S = 6.0
# The create's own timeout, at least: one that times out at the client may still have been made
# (paid, its id never seen), so a create is not squeezed into the invocation's last second.
CREATE_TIMEOUT_MIN_S = 2.0


@dataclass(frozen=True)
class _Created:
    """A background create and what became of its id's write: stored (True), the job moved on
    (False), or the write's error."""

    state: responses.ResponseState
    call: ProviderCall
    stored: bool | Exception


class BackgroundInference:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        queues: StageQueues,
        model_calls: ModelCalls,
        completions: Completions,
        failures: JobFailures,
    ) -> None:
        self.settings = settings
        self.store = store
        self.queues = queues
        self.model_calls = model_calls
        self.completions = completions
        self.failures = failures

    def supported(self) -> bool:
        return (self.settings.openai_base_url or "") not in _unsupported

    # -- the first command of a step: create, store the id, return ------------------------------
    def start(
        self,
        command: StageCommand,
        record: JobRecord,
        messages: list[dict[str, Any]],
        parameters: dict[str, Any],
        ticket: Ticket | None,
        *,
        invocation_deadline_ms: int,
    ) -> dict[str, Any] | None:
        """The step's background response, created and stored; None when the provider has no
        background mode (the caller then makes the call in sync mode)."""
        step = f"{record.job_id}:{record.step_key}"

        def create_and_store() -> _Created:
            # The provider has no idempotency key and no lookup for a create: a response whose id
            # is not stored is paid for again by the retry. So nothing runs between the create and
            # the id's write (the limiter's settle and lease come after), and no create is sent
            # without time for itself and ID_WRITE_RESERVE_S for that write: it is deferred.
            responses.prepare(self.settings)  # a cold client's import is not the create's time
            budget_s = (invocation_deadline_ms - now_ms()) / 1000 - ID_WRITE_RESERVE_S
            if budget_s < CREATE_TIMEOUT_MIN_S:
                raise Deferred(
                    "not enough time left in this invocation to create a response and store its id",
                    delay_s=1,
                )
            # Names the worker of a create whose answer never reaches it (tests/chaos attributes).
            logger.info("creating a background response", extra={"job_id": record.job_id, "step_key": step})
            sent = time.monotonic()
            try:
                state = responses.create_background(
                    self.settings,
                    model=record.model,
                    messages=messages,
                    parameters=parameters,
                    extra_headers=model_headers(record),
                    timeout=min(responses.CONTROL_TIMEOUT_S, budget_s),
                )
            except ModelError as error:
                if error.type == "timeout":
                    # The provider may have made it: a response nobody will read (paid, and paid
                    # again by the retry). Named here so such a payment can be found.
                    logger.warning(
                        "background create timed out: the provider may hold a response Baton cannot find",
                        extra={"job_id": record.job_id, "step_key": step},
                    )
                raise
            answered = time.monotonic()
            # The id, then the write: a worker that dies in between leaves this line without its
            # "stored" line (tests/chaos attributes a duplicate paid create with it).
            logger.info(
                "background response created, storing its id",
                extra={"job_id": record.job_id, "step_key": step, "response_id": state.response_id},
            )
            call = ProviderCall(
                mode="background", step=record.step_key, response_id=state.response_id, status=state.status
            )
            try:
                stored: bool | Exception = self.store.attach_response(record, call)
            except Exception as error:
                stored = error
            if stored is True:
                logger.info(
                    "background response stored",
                    extra={
                        "job_id": record.job_id,
                        "step_key": step,
                        "response_id": state.response_id,
                        "create_ms": round((answered - sent) * 1000),
                        "store_ms": round((time.monotonic() - answered) * 1000),
                    },
                )
            return _Created(state, call, stored)

        # The create settles the ticket's rate slot but not its lease: the response is in flight.
        unleased = dataclasses.replace(ticket, lease_tenant=None) if ticket is not None else None
        try:
            created = self.model_calls.metered(
                unleased,
                create_and_store,
                settle=lambda created: (None, created.state.headers or {}),
            )
        except responses.BackgroundUnsupported as why:
            _unsupported.add(self.settings.openai_base_url or "")
            logger.warning(
                "the provider has no background responses: falling back to sync mode",
                extra={"job_id": record.job_id, "endpoint": self.settings.openai_base_url, "why": str(why)},
            )
            return None  # the sync call that follows uses (and releases) the ticket's lease
        except BaseException:
            self._release(ticket)
            raise
        call = created.call
        if isinstance(created.stored, Exception):
            # The id could not be stored (an AWS error): the retry would not find this response,
            # so stop it now rather than pay for it and another.
            self._release(ticket)
            self._cancel_at_provider(record, call, reason="surplus")
            raise created.stored
        self._hold(ticket, record)
        if created.stored:
            self._point(record, call)
        else:
            # Cancelled or superseded meanwhile, or a copy of this command stored its own response
            # first: this one is surplus, so it stops generating now.
            self._cancel_at_provider(record, call, reason="surplus")
            return {"outcome": "skipped", "reason": "job moved on; its response was cancelled"}
        metrics.add_metric(name="BackgroundResponses", unit=MetricUnit.Count, value=1)
        self._schedule_poll(command, record, 1)
        return {"outcome": "response_created", "response_id": call.response_id}

    # -- a poll, a webhook wake-up, a cancel wake-up, or a retry that finds the stored id --------
    def resume(self, command: StageCommand) -> dict[str, Any]:
        outcome = self._resume(command)
        limiter = self.model_calls.limiter
        if outcome.get("outcome") != "waiting" and limiter is not None and limiter.tenant_max_in_flight:
            # The step ended (or was never this command's): its response is no longer in flight.
            lease_id = f"{command.job_id}:{command.version}:{command.depth}"
            limiter.release_lease(command.tenant_id, lease_id)
        return outcome

    def _resume(self, command: StageCommand) -> dict[str, Any]:
        try:
            record = self.store.get(command.tenant_id, command.job_id)
        except JobNotFoundError:
            return {"outcome": "skipped"}
        call = record.provider_call
        step = f"{command.version}:{command.depth}"
        if call is None or call.mode != "background" or call.step != step or call.response_id is None:
            logger.info("no response stored for this step", extra={"job_id": record.job_id, "step": step})
            return {"outcome": "skipped", "reason": "no response stored for this step"}
        if record.is_terminal or record.step_key != step:
            # The job was cancelled or failed (timed out) while the model worked: stop the
            # provider generating tokens nobody will read.
            ended = record.status in (JobStatus.CANCELLED, JobStatus.FAILED)
            if ended and call.status in responses.PENDING and not call.cancelled:
                self._cancel_at_provider(record, call, reason=record.status.value)
            return {"outcome": "skipped", "reason": f"job is {record.status.value}"}
        if command.poll is None and command.wake is None:
            # A retry (or a copy) of the step's first command: the worker that stored the id may
            # have died before the webhook's pointer.
            self._point(record, call)
        if now_ms() > record.deadline_ms:
            self._cancel_at_provider(record, call, reason="timeout")
            self.failures.fail(record, "timeout", "the job ran past its timeout_seconds")
            return {"outcome": "failed", "error": "timeout"}
        try:
            state = responses.retrieve(self.settings, call.response_id, model=record.model)
        except ModelError as error:
            if error.retryable:
                raise
            self.failures.fail(record, error.type, error.message)
            return {"outcome": "failed", "error": error.type}
        logger.debug("background response polled", extra={"job_id": record.job_id, "status": state.status})
        if state.pending:
            if command.wake is None:  # polls chain; a webhook or cancel wake-up does not start one
                self._schedule_poll(command, record, (command.poll or 0) + 1)
            return {"outcome": "waiting", "status": state.status}
        if state.status == "failed":
            self.failures.fail(record, "model_error", state.error or "the provider's response failed")
            return {"outcome": "failed", "error": "model_error"}
        if state.completion is None:  # cancelled at the provider, not by Baton
            self.failures.fail(record, "provider_cancelled", f"the provider's response is {state.status}")
            return {"outcome": "failed", "error": "provider_cancelled"}
        logger.info(
            "background response finished",
            extra={"job_id": record.job_id, "response_id": call.response_id, "by": command.wake or "poll"},
        )
        return self.completions.record(record, self.completions.messages(record), state.completion)

    # -- helpers -------------------------------------------------------------------------------
    def _hold(self, ticket: Ticket | None, record: JobRecord) -> None:
        if ticket is not None and self.model_calls.limiter is not None:
            until = record.deadline_ms + LEASE_MARGIN_MS
            self.model_calls.limiter.hold_lease(ticket, until_ms=until, now_ms=now_ms())

    def _release(self, ticket: Ticket | None) -> None:
        if ticket is not None and self.model_calls.limiter is not None:
            self.model_calls.limiter.release(ticket)

    def _point(self, record: JobRecord, call: ProviderCall) -> None:
        try:
            self.store.point_to_response(record, call)
        except Exception as error:  # the job has its id: polls resume it, the retry points again
            logger.warning(
                "could not store the webhook's pointer to the response; polls will resume the job",
                extra={"job_id": record.job_id, "response_id": call.response_id, "error": str(error)},
            )

    def _schedule_poll(self, command: StageCommand, record: JobRecord, poll: int) -> None:
        # Never sleep past the job's deadline: the poll after it fails the job and cancels the call.
        left_s = max(1, (record.deadline_ms - now_ms()) // 1000 + 1)
        delay = int(min(self.settings.poll_delay(poll), left_s))
        self.queues.send(
            command.model_copy(update={"poll": poll, "wake": None, "not_before_ms": None}),
            delay_seconds=delay,
        )

    def _cancel_at_provider(self, record: JobRecord, call: ProviderCall, *, reason: str) -> None:
        assert call.response_id is not None
        try:
            state = responses.cancel(self.settings, call.response_id, model=record.model)
        except ModelError as error:
            logger.warning(
                "could not cancel the provider's response",
                extra={"job_id": record.job_id, "response_id": call.response_id, "error": error.message},
            )
            return
        cancelled = state.status == "cancelled"
        logger.info(
            "provider response cancelled" if cancelled else "provider response had already finished",
            extra={"job_id": record.job_id, "response_id": call.response_id, "reason": reason},
        )
        if reason != "surplus":
            updated = call.model_copy(update={"status": state.status, "cancelled": cancelled})
            self.store.record_provider_call(record, updated)
        metrics.add_metric(name="ProviderResponsesCancelled", unit=MetricUnit.Count, value=int(cancelled))
