"""Webhook delivery, signed per Standard Webhooks (symmetric v1) with the standardwebhooks library."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
from standardwebhooks import Webhook

from baton.egress import pinned_client
from baton.errors import BatonError
from baton.models import JobStatus

WEBHOOK_TYPES = {
    JobStatus.COMPLETED: "job.completed",
    JobStatus.FAILED: "job.failed",
    JobStatus.CANCELLED: "job.cancelled",
    JobStatus.NEEDS_REVIEW: "job.needs_review",
}


class WebhookDeliveryError(BatonError):
    type = "webhook_delivery_failed"
    retryable = True


def webhook_id(job_id: str, status: JobStatus) -> str:
    """Stable across retries of the same event, so receivers can deduplicate on it."""
    return f"msg_{job_id}_{status.value}"


def build_payload(status: JobStatus, job_view: dict[str, Any]) -> str:
    body = {"type": WEBHOOK_TYPES[status], "timestamp": job_view["updated_at"], "data": job_view}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def signed_headers(
    secret: str, message_id: str, payload: str, *, now: datetime | None = None
) -> dict[str, str]:
    timestamp = now or datetime.now(tz=UTC)
    return {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, timestamp, payload),
        "user-agent": "Baton-Webhooks/1",
    }


def deliver(
    url: str,
    *,
    secret: str,
    message_id: str,
    payload: str,
    extra_headers: dict[str, str] | None,
    timeout: float,
    allow_private: bool,
) -> int:
    """POST the event; only a 2xx counts as delivered. Returns the status code. A host that is or
    resolves to a blocked address raises BlockedAddressError (not retryable)."""
    headers = {**(extra_headers or {}), **signed_headers(secret, message_id, payload)}
    try:
        with pinned_client(allow_private=allow_private, timeout=timeout) as http:
            response = http.post(url, content=payload.encode(), headers=headers)
    except httpx.HTTPError as error:
        raise WebhookDeliveryError(f"webhook {url} unreachable: {type(error).__name__}") from error
    if not 200 <= response.status_code < 300:
        raise WebhookDeliveryError(f"webhook {url} answered {response.status_code}")
    return response.status_code
