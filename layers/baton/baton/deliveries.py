"""WebhookService: terminal events become deliveries (the notify stage); each queue message is one
attempt (the deliver stage); the sweeper sends lost ones again."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger

from baton import telemetry
from baton.blobs import BlobStore
from baton.clock import now_ms
from baton.egress import BlockedAddressError
from baton.errors import JobNotFoundError
from baton.models import JobStatus, LifecycleDetail, WebhookAuth
from baton.records import JobRecord
from baton.settings import Settings
from baton.store import JobStore
from baton.tenants import TenantStore
from baton.webhook_auth import TokenCache, TokenFetchError, apply, unseal
from baton.webhooks import (
    DELIVERED,
    EXHAUSTED,
    FAILED,
    PENDING,
    WEBHOOK_TYPES,
    AttemptOutcome,
    Delivery,
    DeliveryMessage,
    DeliveryNotFoundError,
    DeliveryQueue,
    DeliveryStore,
    build_payload,
    count,
    failed_before_sending,
    next_delay,
    post_once,
    signed_headers,
    webhook_id,
)

logger = Logger(child=True)
# OAuth2 tokens, shared by the attempts of this execution environment.
TOKENS = TokenCache()

# Standard Webhooks recommends small bodies: beyond this the result travels as a presigned URL.
MAX_INLINE_BODY_BYTES = 20 * 1024
RESULT_PREVIEW_CHARS = 1000
# A message that arrives up to this early is attempted now rather than sent round again.
EARLY_MS = 500
# A pending delivery this long past its due time (beyond a claim's hold) lost its message: the
# sweeper sends it again. Later than any live attempt can take, so it only ever finds lost ones.
OVERDUE_MARGIN_MS = 60_000


class AttemptNotRecordedYet(Exception):
    """A message for attempt N+1 arrived before attempt N was recorded: SQS brings it back later."""


class WebhookService:
    def __init__(
        self,
        settings: Settings,
        *,
        jobs: JobStore,
        tenants: TenantStore,
        store: DeliveryStore,
        queue: DeliveryQueue,
        blobs: BlobStore,
    ) -> None:
        self.settings = settings
        self.jobs = jobs
        self.tenants = tenants
        self.store = store
        self.queue = queue
        self.blobs = blobs

    @classmethod
    def from_settings(cls, settings: Settings, *, jobs: JobStore, blobs: BlobStore) -> WebhookService:
        return cls(
            settings,
            jobs=jobs,
            tenants=TenantStore(settings.jobs_table),
            store=DeliveryStore(settings.jobs_table),
            queue=DeliveryQueue(settings.webhook_queue_url),
            blobs=blobs,
        )

    @property
    def _timeout(self) -> float:
        return self.settings.webhook_timeout_seconds

    @property
    def _claim_ms(self) -> int:
        # Longer than an attempt can take (token fetch, POST, a second POST after a 401).
        return int(self._timeout * 4 * 1000) + 10_000

    # -- terminal event -> delivery ------------------------------------------------------------
    def notify(self, detail: LifecycleDetail) -> dict[str, Any]:
        """A terminal event becomes a webhook delivery (attempted from the delivery queue)."""
        if not detail.status.is_settled or detail.job is None:
            return {"outcome": "ignored"}
        try:
            record = self.jobs.get(detail.tenant_id, detail.job_id)
        except JobNotFoundError:
            logger.warning("notification for a job that no longer exists", extra={"job_id": detail.job_id})
            return {"outcome": "gone"}
        return self.intake(record, detail.status, detail.job)

    def intake(self, record: JobRecord, status: JobStatus, job_view: dict[str, Any]) -> dict[str, Any]:
        if record.webhook is None:
            return {"outcome": "no_webhook"}
        now = now_ms()
        delivery = Delivery(
            tenant_id=record.tenant_id,
            job_id=record.job_id,
            webhook_id=webhook_id(record.job_id, status),
            type=WEBHOOK_TYPES[status],
            url=str(record.webhook["url"]),
            data=job_view,
            expires_at=record.expires_at,
            next_attempt_ms=now,
            auth_sealed=record.webhook.get("auth_sealed"),
        )
        return self.start(delivery)

    def start(self, delivery: Delivery) -> dict[str, Any]:
        """Store a new delivery (a job's, or a batch's: its id in `job_id`) and queue its first
        attempt; a delivery that exists already is queued again only if no attempt was made."""
        now = now_ms()
        if not self.store.create(delivery):
            delivery = self.store.get(delivery.tenant_id, delivery.job_id, delivery.webhook_id)
            if delivery.status != PENDING or delivery.attempt > 0 or delivery.series > 0:
                return {"outcome": "duplicate", "webhook_id": delivery.webhook_id}
        # Sent again when the event comes again before any attempt: the claim keeps it to one.
        self.queue.send(self._message(delivery, due_ms=now), now=now)
        return {"outcome": "queued", "webhook_id": delivery.webhook_id}

    # -- one attempt ---------------------------------------------------------------------------
    def attempt(self, message: DeliveryMessage) -> dict[str, Any]:
        try:
            delivery = self.store.get(message.tenant_id, message.job_id, message.webhook_id)
        except DeliveryNotFoundError:
            logger.info("delivery gone (expired)", extra={"webhook_id": message.webhook_id})
            return {"outcome": "gone"}
        if delivery.series != message.series or delivery.status != PENDING:
            return {"outcome": "stale"}
        if message.attempt > delivery.attempt:
            raise AttemptNotRecordedYet(f"{message.webhook_id}: attempt {delivery.attempt} not recorded yet")
        if message.attempt < delivery.attempt:
            return {"outcome": "stale"}
        now = now_ms()
        if message.due_ms > now + EARLY_MS:
            self.queue.send(message, now=now)  # SQS delays 15 minutes at most: one more hop
            return {"outcome": "waiting", "due_ms": message.due_ms}
        if not self.store.claim(delivery, now=now, hold_ms=self._claim_ms):
            return {"outcome": "claimed_elsewhere"}
        return self._attempt(delivery)

    def _attempt(self, delivery: Delivery) -> dict[str, Any]:
        payload = build_payload(delivery.type, self._fresh_links(delivery))
        if len(payload.encode()) > MAX_INLINE_BODY_BYTES:
            payload = build_payload(delivery.type, self._result_by_url(delivery))
        signed = signed_headers(
            self.tenants.signing_secrets(delivery.tenant_id), delivery.webhook_id, payload
        )
        auth = unseal(delivery.auth_sealed, tenant_id=delivery.tenant_id) if delivery.auth_sealed else None
        outcome = self._post(delivery.url, auth, payload, signed, fresh_token=False)
        if auth is not None and auth.type == "oauth2" and outcome.attempt.status_code == 401:
            # The cached token may have been revoked: fetch it again, once.
            outcome = self._post(delivery.url, auth, payload, signed, fresh_token=True)
        made = delivery.attempt + 1
        next_ms: int | None = None
        if outcome.delivered:
            status = DELIVERED
        elif outcome.stop:
            status = FAILED
        else:
            delay = next_delay(self.settings.webhook_retry_delays, made, outcome.retry_after)
            status = EXHAUSTED if delay is None else PENDING
            if delay is not None:
                next_ms = now_ms() + int(delay * 1000)
                # Queued before the attempt is recorded: if we die in between, this message waits
                # (AttemptNotRecordedYet) for the redelivered attempt to record it.
                self.queue.send(self._message(delivery, due_ms=next_ms, attempt=made), now=now_ms())
        self.store.record_attempt(delivery, outcome.attempt, status=status, next_ms=next_ms)
        self._report(delivery, status, outcome.attempt.status_code, outcome.attempt.error)
        return {"outcome": status, "status_code": outcome.attempt.status_code, "attempt": made}

    def _fresh_links(self, delivery: Delivery) -> dict[str, Any]:
        """A batch's output and errors files by presigned GETs signed for this attempt: the stored
        event has none, since links signed when the batch ended may expire before a late retry."""
        if not delivery.type.startswith("batch."):
            return delivery.data
        data = dict(delivery.data)
        for name in ("output", "errors"):
            key = self.blobs.batch_file_key(delivery.tenant_id, delivery.job_id, name)
            expiry = self.settings.result_url_expiry_seconds
            data[f"{name}_url"] = self.blobs.presigned_url(key, expires_in=expiry)
        return data

    def _result_by_url(self, delivery: Delivery) -> dict[str, Any]:
        """The job view with its result in S3 (a presigned GET, fresh for each attempt)."""
        data = dict(delivery.data)
        result = data.get("result")
        if not isinstance(result, dict):
            return data
        key = self.blobs.result_key(delivery.tenant_id, delivery.job_id)
        if not result.get("result_url"):
            full = {name: value for name, value in result.items() if value is not None}
            self.blobs.write(key, json.dumps(full).encode(), content_type="application/json")
        url = self.blobs.presigned_url(key, expires_in=self.settings.result_url_expiry_seconds)
        text = result.get("text")
        data["result"] = {
            "text": text[:RESULT_PREVIEW_CHARS] if isinstance(text, str) else text,
            "finish_reason": result.get("finish_reason"),
            "result_url": url,
        }
        return data

    def _post(
        self, url: str, auth: WebhookAuth | None, payload: str, signed: dict[str, str], *, fresh_token: bool
    ) -> AttemptOutcome:
        allow_private = self.settings.webhook_allow_private_networks
        try:
            target, auth_headers = apply(
                auth,
                url,
                tokens=TOKENS,
                timeout=self._timeout,
                allow_private=allow_private,
                fresh_token=fresh_token,
            )
        except BlockedAddressError:
            return failed_before_sending("blocked_address", stop=True)
        except TokenFetchError as error:
            return failed_before_sending(f"oauth2_token: {error}", stop=False)
        return post_once(
            target,
            payload=payload,
            headers={**auth_headers, **signed},
            timeout=self._timeout,
            allow_private=allow_private,
        )

    def _report(self, delivery: Delivery, status: str, status_code: int | None, error: str | None) -> None:
        context = {
            "job_id": delivery.job_id,
            "webhook_id": delivery.webhook_id,
            "attempt": delivery.attempt,
            "status_code": status_code,
            "error": error,
        }
        telemetry.webhook_outcome(status)
        if status == DELIVERED:
            count("WebhooksDelivered")
            logger.info("webhook delivered", extra=context)
            self._record_timing(delivery)
            return
        count("WebhookAttemptsFailed")
        # One line per failed attempt, never a traceback.
        logger.warning("webhook attempt failed", extra={**context, "delivery_status": status})
        if status == EXHAUSTED:
            count("WebhooksExhausted")
        elif status == FAILED:
            count("WebhooksFailed")

    def _record_timing(self, delivery: Delivery) -> None:
        try:
            job = self.jobs.get(delivery.tenant_id, delivery.job_id)
        except JobNotFoundError:
            return
        # timings.notify_ms: how long the delivering attempt took.
        self.jobs.record_notification(job, notify_ms=delivery.attempts[-1].duration_ms)

    # -- the overdue sweep ---------------------------------------------------------------------
    def resend_overdue(self, now: int, *, limit: int, keep_going: Callable[[], bool] = lambda: True) -> int:
        """Pending deliveries whose attempt is long overdue (its message was lost: a worker killed
        between its claim and its record, a send that failed) get their message again. Idempotent:
        a conditional write takes each one, and the attempt's claim and counter make a message
        that was only late, not lost, harmless (one attempt is made, the other copy is stale)."""
        overdue_before = now - self._claim_ms - OVERDUE_MARGIN_MS
        resent = 0
        for tenant_id, job_id, message_id in self.store.overdue(overdue_before, limit=limit):
            if not keep_going():
                break
            try:
                delivery = self.store.get(tenant_id, job_id, message_id)
            except DeliveryNotFoundError:
                continue
            if delivery.expires_at * 1000 < now:
                self.store.leave_pending_index(delivery)
                continue
            due = delivery.next_attempt_ms
            if delivery.status != PENDING or due is None or due >= overdue_before:
                continue  # moved on since the index was read
            if not self.store.reschedule_overdue(delivery, now=now):
                continue  # another sweep took it, or a worker holds it
            self.queue.send(self._message(delivery, due_ms=now), now=now)
            count("WebhookDeliveriesResent")
            logger.warning(
                "overdue webhook delivery sent again",
                extra={
                    "job_id": job_id,
                    "webhook_id": message_id,
                    "attempt": delivery.attempt,
                    "overdue_ms": now - due,
                },
            )
            resent += 1
        return resent

    # -- API -----------------------------------------------------------------------------------
    def list(self, tenant_id: str, job_id: str) -> list[Delivery]:
        self.jobs.get(tenant_id, job_id)  # 404 for unknown and foreign jobs
        return self.store.list(tenant_id, job_id)

    def redeliver(self, tenant_id: str, job_id: str, message_id: str) -> Delivery:
        self.jobs.get(tenant_id, job_id)
        return self.restart(tenant_id, job_id, message_id)

    def restart(self, tenant_id: str, job_id: str, message_id: str) -> Delivery:
        """One new attempt series for a delivery of a job or a batch (its id in `job_id`) the
        caller has already checked belongs to the tenant."""
        delivery = self.store.restart(self.store.get(tenant_id, job_id, message_id), now=now_ms())
        now = now_ms()
        self.queue.send(self._message(delivery, due_ms=now), now=now)
        logger.info("webhook redelivery", extra={"job_id": job_id, "webhook_id": message_id})
        return delivery

    @staticmethod
    def _message(delivery: Delivery, *, due_ms: int, attempt: int | None = None) -> DeliveryMessage:
        return DeliveryMessage(
            tenant_id=delivery.tenant_id,
            job_id=delivery.job_id,
            webhook_id=delivery.webhook_id,
            series=delivery.series,
            attempt=delivery.attempt if attempt is None else attempt,
            due_ms=due_ms,
        )
