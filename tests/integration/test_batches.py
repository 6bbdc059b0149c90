"""Batches through the real local stack: every custom_id once in output or errors; cancel stops."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from .conftest import LocalStack

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
