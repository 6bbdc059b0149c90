"""The overdue pending-delivery sweep: a webhook attempt whose queue message was lost is sent again
by the sweeper, once, however many there are (paginated, bounded, idempotent)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import boto3
import pytest

from baton.clock import now_ms
from baton.deliveries import OVERDUE_MARGIN_MS
from baton.settings import get_settings
from baton.sweeper import Sweeper
from baton.webhooks import PENDING_SHARDS, Delivery, DeliveryMessage, DeliveryStore, pending_shard
from baton.wiring import job_failures, job_sweeper, webhook_service

from . import test_notify_handler as notify_tests
from .test_notify_handler import HOOK, Receiver, attempt_queued, deliveries
from .test_sweeper_and_retries import _scheduled_event

if TYPE_CHECKING:
    from conftest import AwsStack, LoadedFunction

# The notify tests' fixtures: a finished job, the deliver function, a receiver, the tenant's secret.
deliver, finished_job, receiver, secret = (
    notify_tests.deliver,
    notify_tests.finished_job,
    notify_tests.receiver,
    notify_tests.secret,
)
TENANT = "acme"
LONG_AGO_MS = 10 * 60 * 1000  # well past a claim's hold (70 s) and the sweep's margin (60 s)


def set_due(aws: AwsStack, job_id: str, webhook_id: str, due_ms: int, **extra: int) -> None:
    """As if the attempt had been due at `due_ms` (and, with claimed_until, held by a worker)."""
    names = ["next_attempt_ms", *extra]
    boto3.client("dynamodb").update_item(
        TableName=aws.jobs_table,
        Key={"pk": {"S": f"DELIVERY#{TENANT}#{job_id}"}, "sk": {"S": webhook_id}},
        UpdateExpression="SET " + ", ".join(f"{name} = :{name}" for name in names),
        ExpressionAttributeValues={
            f":{name}": {"N": str(value)} for name, value in {"next_attempt_ms": due_ms, **extra}.items()
        },
    )


def queued_messages(aws: AwsStack) -> list[DeliveryMessage]:
    return [DeliveryMessage.model_validate_json(m["Body"]) for m in aws.receive("WebhookDeliveryQueue")]


def test_a_delivery_whose_message_was_lost_is_sent_again_once(
    aws: AwsStack,
    notify: LoadedFunction,
    deliver: LoadedFunction,
    receiver: Receiver,
    secret: str,
    finished_job: Any,
) -> None:
    sweeper = aws.load("SweeperFunction")
    job_id, event = finished_job({"url": HOOK})
    notify(event)
    [lost] = aws.receive("WebhookDeliveryQueue")  # taken off the queue and never processed
    [pending] = deliveries(aws, job_id)
    assert pending["status"] == "pending" and pending["attempts"] == []

    # Due just now: not overdue (a message may still be on its way).
    assert sweeper(_scheduled_event())["deliveries_resent"] == 0
    assert aws.receive("WebhookDeliveryQueue") == []

    set_due(aws, job_id, pending["webhook_id"], now_ms() - LONG_AGO_MS)
    assert sweeper(_scheduled_event())["deliveries_resent"] == 1
    assert sweeper(_scheduled_event())["deliveries_resent"] == 0  # idempotent: taken once
    [raw] = aws.receive("WebhookDeliveryQueue")
    resent, original = (DeliveryMessage.model_validate_json(m["Body"]) for m in (raw, lost))
    assert (resent.webhook_id, resent.series, resent.attempt) == (original.webhook_id, 0, 0)

    deliver(aws.sqs_event("WebhookDeliveryQueue", [raw]))
    # The lost message turning up after all changes nothing: its attempt was made.
    deliver(aws.sqs_event("WebhookDeliveryQueue", [lost]))
    assert len(receiver.deliveries) == 1
    [delivered] = deliveries(aws, job_id)
    assert delivered["status"] == "delivered" and len(delivered["attempts"]) == 1
    # Off the pending-deliveries index: no later sweep looks at it again.
    assert list(DeliveryStore(aws.jobs_table).overdue(now_ms() + 10**9, limit=100)) == []


def test_a_lost_retry_is_sent_again_with_its_attempt_number(
    aws: AwsStack, notify: LoadedFunction, receiver: Receiver, secret: str, finished_job: Any
) -> None:
    deliver = aws.load("DeliverFunction", WEBHOOK_RETRY_SCHEDULE="0s,0s")
    job_id, event = finished_job({"url": HOOK})
    notify(event)
    receiver.status = 503
    attempt_queued(aws, deliver)  # attempt 1 fails; attempt 2 is scheduled ...
    [scheduled] = queued_messages(aws)  # ... and its message is lost
    set_due(aws, job_id, scheduled.webhook_id, now_ms() - LONG_AGO_MS)
    receiver.status = 204

    assert job_sweeper(get_settings()).sweep()["deliveries_resent"] == 1

    [raw] = aws.receive("WebhookDeliveryQueue")
    resent = DeliveryMessage.model_validate_json(raw["Body"])
    assert (resent.attempt, resent.series) == (scheduled.attempt, scheduled.series) == (1, 0)
    deliver(aws.sqs_event("WebhookDeliveryQueue", [raw]))
    [logged] = deliveries(aws, job_id)
    assert [a["status_code"] for a in logged["attempts"]] == [503, 204]
    assert logged["status"] == "delivered"


def make_delivery(aws: AwsStack, index: int, *, due_ms: int, expires_at: int | None = None) -> Delivery:
    delivery = Delivery(
        tenant_id=TENANT,
        job_id=f"job_sweep{index:04d}",
        webhook_id=f"msg_job_sweep{index:04d}_completed",
        type="job.completed",
        url=HOOK,
        data={"id": f"job_sweep{index:04d}", "status": "completed", "updated_at": "2026-12-01T00:00:00Z"},
        expires_at=expires_at if expires_at is not None else now_ms() // 1000 + 86_400,
        next_attempt_ms=due_ms,
    )
    assert DeliveryStore(aws.jobs_table).create(delivery)
    return delivery


def test_bounded_sweeps_resend_every_overdue_delivery_once_and_skip_the_rest(
    aws: AwsStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = now_ms()
    overdue = [make_delivery(aws, i, due_ms=now - LONG_AGO_MS - i) for i in range(23)]
    for i in range(3):  # overdue by less than a claim's hold and the margin: maybe still on its way
        make_delivery(aws, 100 + i, due_ms=now - OVERDUE_MARGIN_MS // 2)
    held = make_delivery(aws, 200, due_ms=now - LONG_AGO_MS)
    set_due(aws, held.job_id, held.webhook_id, now - LONG_AGO_MS, claimed_until=now + 60_000)
    # Expired (TTL lags) and first in its shard: it must leave the index, not block it.
    expired = make_delivery(aws, 300, due_ms=now - 10**9, expires_at=now // 1000 - 60)
    assert len({pending_shard(d.webhook_id) for d in overdue}) == PENDING_SHARDS  # spans every shard
    monkeypatch.setattr("baton.webhooks.OVERDUE_PAGE", 2)
    sweeper = Sweeper(job_failures(get_settings()), webhook_service(get_settings()), max_per_run=5)

    runs: list[int] = []
    while not runs or runs[-1]:
        runs.append(sweeper.sweep()["deliveries_resent"])
        assert len(runs) < 20, runs

    assert all(count <= 5 for count in runs) and len(runs) >= 5  # bounded: several runs
    messages = queued_messages_all(aws)
    assert sorted(m.webhook_id for m in messages) == sorted(d.webhook_id for d in overdue)  # each once
    store = DeliveryStore(aws.jobs_table)
    assert [w for _, _, w in store.overdue(now_ms() + 10**9, limit=1000) if w == expired.webhook_id] == []
    left = {w for _, _, w in store.overdue(now - LONG_AGO_MS + 1, limit=1000)}
    assert left == {held.webhook_id}  # held by a worker: left alone


def queued_messages_all(aws: AwsStack) -> list[DeliveryMessage]:
    found: list[DeliveryMessage] = []
    while batch := queued_messages(aws):
        found.extend(batch)
    return found
