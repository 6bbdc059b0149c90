"""The provider limiter in the running stack: a burst beyond the model's rate limit completes, every
job once, none failed; the limits are learned from the answers' headers (ProviderRequestsPerMinute
is 0 on the shared stack). No timing is asserted: whether a call met a 429 depends on the machine."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .conftest import LocalStack, Tenant, wait_for_terminal

pytestmark = pytest.mark.integration

BURST = 12
RPM = 120  # 10 requests per 5 s window


@pytest.fixture
def rate_limited_model(local_stack: LocalStack) -> Iterator[None]:
    """The local model enforces RPM for this test; after it, no limit, and the limiter's state for
    the model is removed so later tests learn "unlimited" again."""
    faults = f"{local_stack.simulator_url}/_sim/faults"
    httpx.post(faults, json={"rate_limit_rpm": RPM, "rate_limit_window_s": 5}, timeout=10).raise_for_status()
    try:
        yield
    finally:
        httpx.post(faults, json={"rate_limit_rpm": 0}, timeout=10).raise_for_status()
        ddb = local_stack.aws("dynamodb")
        for item in provider_items(local_stack):
            ddb.delete_item(TableName=limiter_table(local_stack), Key={"pk": item["pk"]})


def limiter_table(local_stack: LocalStack) -> str:
    names: list[str] = local_stack.aws("dynamodb").list_tables()["TableNames"]
    [name] = [name for name in names if "LimiterTable" in name]
    return name


def provider_items(local_stack: LocalStack) -> list[dict[str, Any]]:
    answer = local_stack.aws("dynamodb").scan(TableName=limiter_table(local_stack))
    items: list[dict[str, Any]] = answer["Items"]
    return [item for item in items if item["pk"]["S"].startswith("provider#")]


def test_a_burst_beyond_the_providers_limit_completes_every_job_once(
    local_stack: LocalStack, tenant: Tenant, rate_limited_model: None
) -> None:
    with local_stack.client(tenant) as api:
        ids = []
        for index in range(BURST):
            answer = api.post("/v1/jobs", json={"input": {"prompt": f"Classify ticket {index}."}})
            assert answer.status_code == 202, answer.text
            ids.append(answer.json()["id"])
        jobs = [wait_for_terminal(api, job_id, timeout_s=180) for job_id in ids]
    assert [job["status"] for job in jobs] == ["completed"] * BURST
    for job_id in ids:
        answered = [call for call in local_stack.model_calls(job_id) if call["status"] == 200]
        assert len(answered) == 1, f"{job_id}: {len(answered)} paid calls"
    # The limit was learned from the answers' x-ratelimit-limit-requests.
    learned = [int(item.get("learned_rpm", {}).get("N", 0)) for item in provider_items(local_stack)]
    assert RPM in learned
