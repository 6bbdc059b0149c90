"""`baton stats` over a running `baton dev`: the functions print EMF as on Lambda, and a job's
tokens, stage durations and latencies show in the figures."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from .conftest import ROOT, LocalStack, wait_for_terminal, wait_until

pytestmark = pytest.mark.integration


def stats(stack: LocalStack) -> list[dict[str, Any]]:
    answer = subprocess.run(
        [
            sys.executable,
            "-m",
            "baton_dev.cli",
            "stats",
            "--json",
            "--since",
            "10m",
            "--state-dir",
            str(stack.state_dir),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert answer.returncode == 0, answer.stderr
    return list(json.loads(answer.stdout)["metrics"])


def find(metrics: list[dict[str, Any]], name: str, **dimensions: str) -> dict[str, Any] | None:
    for metric in metrics:
        if metric["metric"] == name and all(metric["dimensions"].get(k) == v for k, v in dimensions.items()):
            return metric
    return None


def test_a_jobs_tokens_and_stage_durations_show_in_baton_stats(local_stack: LocalStack) -> None:
    # A tenant of its own: its JobTokens series holds this job's tokens and nothing else.
    tenant = local_stack.create_tenant("stats-probe")
    with local_stack.client(tenant) as api:
        answer = api.post("/v1/jobs", json={"input": {"prompt": "Summarize: metrics reach the logs."}})
        assert answer.status_code == 202, answer.text
        job = wait_for_terminal(api, answer.json()["id"])
    assert job["status"] == "completed", job
    tokens = job["usage"]["total_tokens"]
    assert tokens > 0

    seen: list[dict[str, Any]] = []

    def settled_metrics_logged() -> bool:
        seen[:] = stats(local_stack)
        return find(seen, "JobTokens", tenant=tenant.name) is not None

    wait_until(settled_metrics_logged, "the job's JobTokens in `baton stats --json`", timeout_s=60)
    job_tokens = find(seen, "JobTokens", tenant=tenant.name)
    assert job_tokens is not None
    assert (job_tokens["count"], job_tokens["sum"]) == (1, tokens)
    assert job_tokens["dimensions"]["model"] == job["model"]
    infer = find(seen, "StageDuration", stage="infer")
    assert infer is not None and infer["count"] >= 1 and infer["max"] > 0
    assert infer["unit"] == "Milliseconds"
    model = find(seen, "ModelLatency", model=job["model"], outcome="ok")
    assert model is not None and model["count"] >= 1
    end_to_end = find(seen, "EndToEndLatency", status="completed")
    assert end_to_end is not None and end_to_end["max"] >= end_to_end["p50"] > 0
    assert find(seen, "QueueWait") is not None
