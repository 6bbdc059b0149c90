"""Webhook deliveries: one record per (job, webhook-id), each attempt logged, a retry schedule that
outlasts an outage, signed per Standard Webhooks (symmetric v1) with the standardwebhooks library.

Flow: a terminal event becomes a delivery (`intake`) and a message on the delivery queue. Each
message is one attempt (`attempt`); a failed one schedules the next on the same queue. SQS delays
a message by 15 minutes at most, so a message that arrives before its attempt is due is sent again
with the rest of the wait (up to 900 s each hop) - see the README for why not EventBridge Scheduler.
"""

from __future__ import annotations

import json
import math
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict
from standardwebhooks import Webhook

from baton.aws import client, from_dynamo, to_dynamo
from baton.clock import iso_from_ms, now_ms
from baton.egress import BlockedAddressError, pinned_client
from baton.errors import JobNotFoundError
from baton.models import JobStatus
from baton.store import due_in_shards

logger = Logger(child=True)
metrics = Metrics()

WEBHOOK_TYPES = {
    JobStatus.COMPLETED: "job.completed",
    JobStatus.FAILED: "job.failed",
    JobStatus.CANCELLED: "job.cancelled",
    JobStatus.NEEDS_REVIEW: "job.needs_review",
}
MAX_SQS_DELAY_SECONDS = 900
# A Retry-After further out than this is taken as this (a day): the delivery stays pending.
MAX_RETRY_AFTER_SECONDS = 86_400
PENDING, DELIVERED, FAILED, EXHAUSTED = "pending", "delivered", "failed", "exhausted"
# Pending deliveries carry pending_shard in the sparse pending-deliveries index (keyed by their
# next_attempt_ms), so the sweeper finds one whose message was lost without scanning.
PENDING_DELIVERIES_INDEX = "pending-deliveries"
PENDING_SHARDS = 4
OVERDUE_PAGE = 100


def pending_shard(message_id: str) -> str:
    return f"pending#{zlib.crc32(message_id.encode()) % PENDING_SHARDS}"


class DeliveryNotFoundError(JobNotFoundError):
    """Unknown webhook id (or another tenant's job): 404, like unknown jobs."""


def webhook_id(job_id: str, status: JobStatus) -> str:
    """Stable across retries of the same event, so receivers can deduplicate on it."""
    return f"msg_{job_id}_{status.value}"


def build_payload(event_type: str, job_view: dict[str, Any]) -> str:
    # A job view has updated_at; a batch view (batch.* events) has completed_at.
    timestamp = job_view.get("updated_at") or job_view.get("completed_at")
    body = {"type": event_type, "timestamp": timestamp, "data": job_view}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def signed_headers(
    secrets: list[str], message_id: str, payload: str, *, now: datetime | None = None
) -> dict[str, str]:
    """One `v1,<sig>` per secret, space-separated (Standard Webhooks): during a rotation both the
    new and the previous secret sign, so a receiver verifies with whichever it has."""
    timestamp = now or datetime.now(tz=UTC)
    signatures = " ".join(Webhook(secret).sign(message_id, timestamp, payload) for secret in secrets)
    return {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": signatures,
        "user-agent": "Baton-Webhooks/1",
    }


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """Retry-After as delay-seconds or an HTTP-date (RFC 9110); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_SECONDS)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max(0.0, when.timestamp() - (now or time.time())), MAX_RETRY_AFTER_SECONDS)


# -- records -----------------------------------------------------------------------------------
class Attempt(BaseModel):
    model_config = ConfigDict(extra="forbid")

    at: str
    status_code: int | None = None
    error: str | None = None
    duration_ms: int


class DeliveryMessage(BaseModel):
    """One attempt to make: travels on the delivery queue."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant_id: str
    job_id: str
    webhook_id: str
    series: int  # bumped by each redelivery: messages of an older series are dropped
    attempt: int  # attempts already made in this series
    due_ms: int


def delivery_key(tenant_id: str, job_id: str, message_id: str) -> dict[str, str]:
    # Its own partition per job: tenant-scoped by construction, never mixed with job items.
    return {"pk": f"DELIVERY#{tenant_id}#{job_id}", "sk": message_id}


@dataclass
class Delivery:
    tenant_id: str
    job_id: str
    webhook_id: str
    type: str
    url: str
    data: dict[str, Any]
    expires_at: int
    status: str = PENDING
    series: int = 0
    attempt: int = 0
    attempts: list[Attempt] = field(default_factory=list)
    next_attempt_ms: int | None = None
    auth_sealed: str | None = None  # webhook.auth, KMS-encrypted (baton.webhook_auth)

    def to_item(self) -> dict[str, Any]:
        item: dict[str, Any] = {
            **delivery_key(self.tenant_id, self.job_id, self.webhook_id),
            "tenant_id": self.tenant_id,
            "job_id": self.job_id,
            "type": self.type,
            "url": self.url,
            "data": json.dumps(self.data, separators=(",", ":")),
            "expires_at": self.expires_at,
            "status": self.status,
            "series": self.series,
            "attempt": self.attempt,
            "attempts": json.dumps([attempt.model_dump() for attempt in self.attempts]),
        }
        if self.next_attempt_ms is not None:
            item["next_attempt_ms"] = self.next_attempt_ms
        if self.status == PENDING:
            item["pending_shard"] = pending_shard(self.webhook_id)
        if self.auth_sealed is not None:
            item["auth_sealed"] = self.auth_sealed
        return item

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> Delivery:
        return cls(
            tenant_id=str(item["tenant_id"]),
            job_id=str(item["job_id"]),
            webhook_id=str(item["sk"]),
            type=str(item["type"]),
            url=str(item["url"]),
            data=json.loads(item["data"]),
            expires_at=int(item["expires_at"]),
            status=str(item["status"]),
            series=int(item["series"]),
            attempt=int(item["attempt"]),
            attempts=[Attempt.model_validate(a) for a in json.loads(item["attempts"])],
            next_attempt_ms=int(item["next_attempt_ms"]) if "next_attempt_ms" in item else None,
            auth_sealed=str(item["auth_sealed"]) if "auth_sealed" in item else None,
        )

    def public_view(self) -> dict[str, Any]:
        """As `GET /v1/jobs/{id}/deliveries` lists it (never the URL's credentials or auth)."""
        return {
            "webhook_id": self.webhook_id,
            "type": self.type,
            "status": self.status,
            "attempts": [attempt.model_dump() for attempt in self.attempts],
            "next_attempt_at": iso_from_ms(self.next_attempt_ms) if self.next_attempt_ms else None,
        }


class DeliveryStore:
    def __init__(self, table_name: str) -> None:
        self.table_name = table_name

    @property
    def _ddb(self) -> Any:
        return client("dynamodb")

    def create(self, delivery: Delivery) -> bool:
        try:
            self._ddb.put_item(
                TableName=self.table_name,
                Item=to_dynamo(delivery.to_item()),
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as error:
            if error.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def get(self, tenant_id: str, job_id: str, message_id: str) -> Delivery:
        answer = self._ddb.get_item(
            TableName=self.table_name,
            Key=to_dynamo(delivery_key(tenant_id, job_id, message_id)),
            ConsistentRead=True,
        )
        if "Item" not in answer:
            raise DeliveryNotFoundError(f"delivery {message_id[:80]} not found")
        return Delivery.from_item(from_dynamo(answer["Item"]))

    def list(self, tenant_id: str, job_id: str) -> list[Delivery]:
        deliveries: list[Delivery] = []
        query: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": to_dynamo({":pk": f"DELIVERY#{tenant_id}#{job_id}"}),
            "ConsistentRead": True,
        }
        while True:
            answer = self._ddb.query(**query)
            deliveries.extend(Delivery.from_item(from_dynamo(item)) for item in answer.get("Items", []))
            if "LastEvaluatedKey" not in answer:
                return deliveries
            query["ExclusiveStartKey"] = answer["LastEvaluatedKey"]

    def _update(self, delivery: Delivery, expression: str, condition: str, values: dict[str, Any]) -> bool:
        try:
            self._ddb.update_item(
                TableName=self.table_name,
                Key=to_dynamo(delivery_key(delivery.tenant_id, delivery.job_id, delivery.webhook_id)),
                UpdateExpression=expression,
                ConditionExpression=condition,
                ExpressionAttributeNames={"#status": "status", "#attempt": "attempt", "#series": "series"},
                ExpressionAttributeValues=to_dynamo(values),
            )
        except ClientError as error:
            if error.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def claim(self, delivery: Delivery, *, now: int, hold_ms: int) -> bool:
        """Only one worker makes attempt N of a series (SQS may hand the message out twice); a
        worker that died holding it loses the claim after `hold_ms`."""
        return self._update(
            delivery,
            "SET claimed_until = :until",
            "#series = :series AND #attempt = :attempt AND #status = :pending"
            " AND (attribute_not_exists(claimed_until) OR claimed_until < :now)",
            {
                ":until": now + hold_ms,
                ":series": delivery.series,
                ":attempt": delivery.attempt,
                ":pending": PENDING,
                ":now": now,
            },
        )

    def record_attempt(
        self, delivery: Delivery, attempt: Attempt, *, status: str, next_ms: int | None
    ) -> bool:
        attempts = [*delivery.attempts, attempt]
        values: dict[str, Any] = {
            ":attempts": json.dumps([a.model_dump() for a in attempts]),
            ":status": status,
            ":next": delivery.attempt + 1,
            ":series": delivery.series,
            ":attempt": delivery.attempt,
        }
        expression = "SET attempts = :attempts, #status = :status, #attempt = :next"
        if next_ms is not None:
            expression += ", next_attempt_ms = :next_ms REMOVE claimed_until"
            values[":next_ms"] = next_ms
        else:
            expression += " REMOVE claimed_until, next_attempt_ms"
        if status != PENDING:
            expression += ", pending_shard"  # off the pending-deliveries index: nothing left to send
        recorded = self._update(delivery, expression, "#series = :series AND #attempt = :attempt", values)
        if recorded:
            delivery.attempts, delivery.status, delivery.attempt = attempts, status, delivery.attempt + 1
            delivery.next_attempt_ms = next_ms
        return recorded

    def restart(self, delivery: Delivery, *, now: int) -> Delivery:
        """A new attempt series (redeliver): older series' messages become stale."""
        answer = self._ddb.update_item(
            TableName=self.table_name,
            Key=to_dynamo(delivery_key(delivery.tenant_id, delivery.job_id, delivery.webhook_id)),
            UpdateExpression=(
                "SET #series = #series + :one, #attempt = :zero, #status = :pending, next_attempt_ms = :now,"
                " pending_shard = :shard REMOVE claimed_until"
            ),
            ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeNames={"#status": "status", "#attempt": "attempt", "#series": "series"},
            ExpressionAttributeValues=to_dynamo(
                {
                    ":one": 1,
                    ":zero": 0,
                    ":pending": PENDING,
                    ":now": now,
                    ":shard": pending_shard(delivery.webhook_id),
                }
            ),
            ReturnValues="ALL_NEW",
        )
        return Delivery.from_item(from_dynamo(answer["Attributes"]))

    # -- the overdue sweep ---------------------------------------------------------------------
    def overdue(
        self, before_ms: int, *, limit: int, page_size: int | None = None
    ) -> Iterator[tuple[str, str, str]]:
        """(tenant_id, job_id, webhook_id) of pending deliveries whose next attempt was due before
        `before_ms`: at most `limit`, paginated, oldest first within each shard."""
        for keys in due_in_shards(
            self.table_name,
            PENDING_DELIVERIES_INDEX,
            shards=[f"pending#{shard}" for shard in range(PENDING_SHARDS)],
            shard_attribute="pending_shard",
            due_attribute="next_attempt_ms",
            before=before_ms,
            limit=limit,
            page_size=page_size or OVERDUE_PAGE,
        ):
            # DELIVERY#<tenant>#<job>: job ids never hold a '#'.
            tenant_id, job_id = str(keys["pk"]).removeprefix("DELIVERY#").rsplit("#", 1)
            yield tenant_id, job_id, str(keys["sk"])

    def reschedule_overdue(self, delivery: Delivery, *, now: int) -> bool:
        """Take an overdue attempt for re-sending: moves its due time to `now`, only if nothing
        touched it since it was read and no worker holds it. One sweep wins; the due time moving
        keeps the next sweeps off it until it is overdue again."""
        return self._update(
            delivery,
            "SET next_attempt_ms = :now",
            "#status = :pending AND #series = :series AND #attempt = :attempt AND next_attempt_ms = :was"
            " AND (attribute_not_exists(claimed_until) OR claimed_until < :now)",
            {
                ":now": now,
                ":pending": PENDING,
                ":series": delivery.series,
                ":attempt": delivery.attempt,
                ":was": delivery.next_attempt_ms,
            },
        )

    def leave_pending_index(self, delivery: Delivery) -> None:
        """An expired delivery (TTL not applied yet) never takes a place in a sweep again."""
        try:
            self._ddb.update_item(
                TableName=self.table_name,
                Key=to_dynamo(delivery_key(delivery.tenant_id, delivery.job_id, delivery.webhook_id)),
                UpdateExpression="REMOVE pending_shard",
                ConditionExpression="attribute_exists(pk)",
            )
        except ClientError as error:
            if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise


# -- one attempt -------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttemptOutcome:
    attempt: Attempt
    delivered: bool
    stop: bool  # no retry can help (410 Gone, blocked address)
    retry_after: float | None = None


def post_once(
    url: str,
    *,
    payload: str,
    headers: dict[str, str],
    timeout: float,
    allow_private: bool,
) -> AttemptOutcome:
    """POST once. Only a 2xx within `timeout` counts; never raises for the receiver's failures."""
    started_ms = now_ms()
    started = time.monotonic()
    status_code: int | None = None
    retry_after: float | None = None
    error: str | None = None
    stop = False
    try:
        with pinned_client(allow_private=allow_private, timeout=timeout) as http:
            response = http.post(url, content=payload.encode(), headers=headers)
        status_code = response.status_code
        retry_after = retry_after_seconds(response.headers.get("retry-after"))
    except BlockedAddressError:
        error, stop = "blocked_address", True
    except httpx.TimeoutException:
        error = "timeout"
    except httpx.HTTPError as failure:
        error = f"connection_error: {type(failure).__name__}"
    duration = time.monotonic() - started
    delivered = status_code is not None and 200 <= status_code < 300
    if delivered and duration > timeout:
        delivered, error = False, "timeout"  # a 2xx that came too late does not count
    elif status_code == 410:
        error, stop = "gone", True
    elif status_code is not None and not delivered:
        error = "redirect_not_followed" if 300 <= status_code < 400 else "http_error"
    attempt = Attempt(
        at=iso_from_ms(started_ms), status_code=status_code, error=error, duration_ms=round(duration * 1000)
    )
    return AttemptOutcome(attempt=attempt, delivered=delivered, stop=stop, retry_after=retry_after)


def failed_before_sending(error: str, *, stop: bool) -> AttemptOutcome:
    """An attempt that ended before its POST (blocked token URL, token endpoint down)."""
    return AttemptOutcome(
        attempt=Attempt(at=iso_from_ms(now_ms()), error=error, duration_ms=0), delivered=False, stop=stop
    )


def next_delay(schedule: list[float], attempts_made: int, retry_after: float | None) -> float | None:
    """Seconds until the next attempt, never sooner than Retry-After; None when none is left."""
    if attempts_made > len(schedule):
        return None
    delay = schedule[attempts_made - 1]
    return max(delay, retry_after) if retry_after is not None else delay


def hop_delay(due_ms: int, now: int) -> int:
    """SQS DelaySeconds for a message due at `due_ms` (at most 900: longer waits take hops)."""
    return max(0, min(MAX_SQS_DELAY_SECONDS, math.ceil((due_ms - now) / 1000)))


class DeliveryQueue:
    def __init__(self, queue_url: str) -> None:
        self.queue_url = queue_url

    def send(self, message: DeliveryMessage, *, now: int) -> None:
        client("sqs").send_message(
            QueueUrl=self.queue_url,
            MessageBody=message.model_dump_json(),
            DelaySeconds=hop_delay(message.due_ms, now),
            MessageAttributes={"job_id": {"DataType": "String", "StringValue": message.job_id}},
        )


def count(name: str) -> None:
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)
