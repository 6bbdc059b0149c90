"""Batches through the real local stack: every custom_id once in output or errors; cancel stops."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from baton_dev.webhook_receiver import WebhookReceiver

from .conftest import LocalStack, Tenant, queue_drained, wait_until

pytestmark = pytest.mark.integration


def wait_for_batch(api: httpx.Client, batch_id: str, timeout_s: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    batch: dict[str, Any] = {}
    while time.monotonic() < deadline:
        batch = api.get(f"/v1/batches/{batch_id}").json()
        if batch["status"] in {"completed", "failed", "cancelled"}:
            return batch
        time.sleep(0.5)
    pytest.fail(f"batch {batch_id} not finished after {timeout_s}s; last seen {batch}")


def test_a_batch_with_poisoned_lines_accounts_for_every_line_once(
    local_stack: LocalStack, api: httpx.Client
) -> None:
    lines = [
        {"custom_id": f"ok-{i}", "input": {"prompt": f"Summarize: item {i} shipped on time."}}
        for i in range(8)
    ]
    lines.insert(3, {"custom_id": "poison-model", "input": {"prompt": "hi"}, "model": "gpt-nope"})
    lines.insert(6, {"custom_id": "poison-context", "input": {"prompt": "[sim:context_length] hi"}})
    created = api.post("/v1/documents", json={"filename": "lines.jsonl"}).json()
    body = "\n".join(json.dumps(line) for line in lines).encode()
    assert httpx.put(created["upload"]["url"], content=body, headers=created["upload"]["headers"]).is_success
    answer = api.post("/v1/batches", json={"input_document_id": created["id"]})
    assert answer.status_code == 202, answer.text
    assert answer.headers["Location"] == f"/v1/batches/{answer.json()['id']}"
    batch = wait_for_batch(api, answer.json()["id"])
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 10, "completed": 8, "failed": 2, "cancelled": 0}
    output = [json.loads(raw) for raw in httpx.get(batch["output_url"]).text.splitlines()]
    errors = [json.loads(raw) for raw in httpx.get(batch["errors_url"]).text.splitlines()]
    seen = [entry["custom_id"] for entry in output + errors]
    assert sorted(seen) == sorted(str(line["custom_id"]) for line in lines)  # every line, exactly once
    assert {entry["custom_id"]: entry["error"]["type"] for entry in errors} == {
        "poison-model": "invalid_model",
        "poison-context": "context_length_exceeded",
    }


def test_a_cancelled_batch_stops(api: httpx.Client) -> None:
    lines = [
        {"custom_id": str(i), "input": {"prompt": f"[sim:slow=2000] Summarize: item {i}."}} for i in range(30)
    ]
    batch_id = api.post("/v1/batches", json={"requests": lines}).json()["id"]
    cancelled = api.delete(f"/v1/batches/{batch_id}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] in {"cancelling", "cancelled"}
    batch = wait_for_batch(api, batch_id)
    assert batch["status"] == "cancelled"
    counts = batch["request_counts"]
    assert counts["cancelled"] > 0
    assert counts["completed"] + counts["failed"] + counts["cancelled"] == 30
    errors = [json.loads(raw) for raw in httpx.get(batch["errors_url"]).text.splitlines()]
    output = [json.loads(raw) for raw in httpx.get(batch["output_url"]).text.splitlines()]
    assert sorted(entry["custom_id"] for entry in errors + output) == sorted(str(i) for i in range(30))


def test_a_finished_batch_is_delivered_to_its_webhook_and_logged(api: httpx.Client, tenant: Tenant) -> None:
    """batch.completed goes through the delivery machinery: signed, retried after a failure, logged."""
    lines = [{"custom_id": f"w{i}", "input": {"prompt": f"Summarize: parcel {i} arrived."}} for i in range(3)]
    with WebhookReceiver(tenant.webhook_secret, fail_first=1) as receiver:
        answer = api.post("/v1/batches", json={"requests": lines, "webhook": {"url": receiver.url}})
        assert answer.status_code == 202, answer.text
        batch_id = answer.json()["id"]
        batch = wait_for_batch(api, batch_id)
        [event] = receiver.wait_until(lambda events: len(events) >= 1, timeout=120)
    assert batch["status"] == "completed"
    assert event.verified and event.webhook_id == f"msg_{batch_id}_completed"
    assert receiver.failed_ids == [event.webhook_id]  # the same webhook-id on the retry
    assert event.payload["type"] == "batch.completed"
    assert event.payload["data"]["id"] == batch_id
    assert event.payload["data"]["request_counts"]["completed"] == 3
    # The attempt is recorded just after the receiver answered it: wait for the log to say so.
    deadline = time.monotonic() + 60
    deliveries: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        logged = api.get(f"/v1/batches/{batch_id}/deliveries")
        assert logged.status_code == 200, logged.text
        deliveries = logged.json()["data"]
        if deliveries and deliveries[0]["status"] != "pending":
            break
        time.sleep(0.3)
    [delivery] = deliveries
    assert delivery["status"] == "delivered", delivery
    assert [attempt["status_code"] for attempt in delivery["attempts"]] == [503, 204]


def test_a_slice_in_the_batch_dlq_fails_the_batch_every_line_once(
    local_stack: LocalStack, api: httpx.Client, tenant: Tenant
) -> None:
    """A slice command that crashed its worker MaxReceiveCount times, as SQS leaves it in the batch
    DLQ: the dead-letter function consumes it and the batch ends `failed` with every custom_id once
    (each line either ran, if the fan-out claimed its slice before the failure was recorded, or
    failed as batch_failed), its webhook `batch.failed`, and the DLQ empty."""
    lines = [
        {"custom_id": f"d{i}", "input": {"prompt": f"[sim:slow=1500] Summarize: box {i}."}} for i in range(4)
    ]
    with WebhookReceiver(tenant.webhook_secret) as receiver:
        answer = api.post("/v1/batches", json={"requests": lines, "webhook": {"url": receiver.url}})
        assert answer.status_code == 202, answer.text
        batch_id = answer.json()["id"]
        # The second slice's command (a 4-line batch has none alive: no live worker races it).
        dead = {"kind": "slice", "tenant_id": tenant.name, "batch_id": batch_id, "start": 100}
        local_stack.aws("sqs").send_message(
            QueueUrl=local_stack.state["queues"]["BatchDeadLetterQueue"], MessageBody=json.dumps(dead)
        )
        batch = wait_for_batch(api, batch_id)
        [event] = receiver.wait_until(lambda events: len(events) >= 1, timeout=120)
    assert batch["status"] == "failed", batch
    counts = batch["request_counts"]
    assert counts["completed"] + counts["failed"] + counts["cancelled"] == counts["total"] == 4
    output = [json.loads(raw) for raw in httpx.get(batch["output_url"]).text.splitlines()]
    errors = [json.loads(raw) for raw in httpx.get(batch["errors_url"]).text.splitlines()]
    assert sorted(entry["custom_id"] for entry in output + errors) == [f"d{i}" for i in range(4)]
    assert {entry["error"]["type"] for entry in errors} <= {"batch_failed"}
    assert (len(output), len(errors)) == (counts["completed"], counts["failed"])
    assert event.verified and event.webhook_id == f"msg_{batch_id}_failed"
    assert event.payload["type"] == "batch.failed"
    wait_until(lambda: queue_drained(local_stack, "BatchDeadLetterQueue"), "the batch DLQ is consumed")
