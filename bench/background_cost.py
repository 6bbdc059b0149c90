"""8. Background inference: Lambda GB-seconds per job at model latencies of 1 s and 60 s.

The same prompt jobs on two stacks, `InferenceMode=sync` and `InferenceMode=background` (default
poll schedule, the simulator's signed webhooks on), the model taking 1 s and then 60 s (real
time, `[sim:slow=MS]`). Every function's billed duration is measured where it runs
(bench/stack.py) and priced with bench/prices.py, like scenario 4 (cost): in sync mode the infer
invocation waits for the model; in background mode it creates the response and returns, and a
poll or the webhook records the answer, so GB-seconds per job should barely depend on latency.
Step Functions rows: the sync phase's steps orchestrated by Step Functions (no stage queues;
Standard bills its transitions, Express its duration), each job's infer task waiting alone.
"""

from __future__ import annotations

import math
from typing import Any

from baton.prices import PRICES, PRICES_AS_OF, express_duration_cost, lambda_cost, per_million
from bench.cost import _phase, job_units, price
from bench.report import Result, scenario_main
from bench.stack import StackOptions, StackProcess, WebhookSink

LATENCIES_S = (1, 60)
TRANSITIONS = 3  # a Choice (document or not), the infer task, Succeed (notify is the bus's)


def _gb_s(lambdas: dict[str, dict[str, float]]) -> float:
    return sum(stats["memory_mb"] / 1024 * stats["billed_ms"] / 1000 for stats in lambdas.values())


def _measure(mode: str, jobs: int) -> dict[int, dict[str, Any]]:
    # A known provider limit: with learned limits the first calls are probes, one at a time, and
    # the wait for a slot would be billed inside infer (not what this scenario measures).
    options = StackOptions(parameters={"InferenceMode": mode, "ProviderRequestsPerMinute": "60000"})
    out: dict[int, dict[str, Any]] = {}
    with StackProcess(options) as live, WebhookSink() as sink:
        memory = {str(k): int(v) for k, v in live.info["memory_mb"].items()}
        with live.client() as client:  # warm-up: cold starts are not per-job costs
            warm = [live.submit(client, {"input": {"prompt": f"warm {i}"}}) for i in range(2)]
        live.wait_terminal([s.job_id for s in warm if s.job_id], timeout_s=120)
        for seconds in LATENCIES_S:
            body = {"input": {"prompt": f"Summarize: the tide turned at noon. [sim:slow={seconds * 1000}]"}}
            phase = _phase(live, sink, body, jobs)
            measured = job_units(phase["metrics"], phase["jobs"], memory)
            extra = {"sqs_requests": 1.0, "apigw_requests": 1.0}
            lines = price(measured["units"], measured["lambdas"], extra)
            out[seconds] = {
                "mode": mode,
                "jobs": phase["jobs"],
                "completed": phase["completed"],
                "lambdas": measured["lambdas"],
                "gb_s": _gb_s(measured["lambdas"]),
                "infer_gb_s": _gb_s({k: v for k, v in measured["lambdas"].items() if k == "InferFunction"}),
                "lines": lines,
                "total": sum(lines.values()),
                "infer_memory_mb": memory.get("InferFunction", 256),
            }
    return out


def _step_functions(sync: dict[str, Any]) -> tuple[float, float]:
    """The sync phase orchestrated by Step Functions: stage SQS goes, transitions (Standard) or
    the execution's duration (Express) come, and each job's infer task is its own invocation
    waiting for the model alone (no batch shares the wait)."""
    lines = dict(sync["lines"])
    infer = sync["lambdas"].get("InferFunction", {})
    task_ms = infer.get("billed_ms", 0) / max(infer.get("invocations", 1), 1e-9)
    lines.pop("SQS", None)
    lines["Lambda Infer"] = lambda_cost(1, math.ceil(task_ms), sync["infer_memory_mb"])
    base = sum(lines.values())
    standard = base + TRANSITIONS * PRICES.sfn_standard_per_transition
    express = base + PRICES.sfn_express_per_request + express_duration_cost(task_ms)
    return standard, express


def run(*, quick: bool = False, stack: StackProcess | None = None) -> Result:
    """Two stacks of its own (sync, background)."""
    del stack
    jobs = 4 if quick else 10
    result = Result("background_cost", "8. Background inference: GB-s per job vs model latency")
    measured = {mode: _measure(mode, jobs) for mode in ("sync", "background")}
    for seconds in LATENCIES_S:
        sync, background = measured["sync"][seconds], measured["background"][seconds]
        standard, express = _step_functions(sync)
        for row in (sync, background):
            result.add(
                f"{seconds} s model, {row['mode']}: Lambda GB-s per job (infer)",
                f"{row['gb_s']:.4f} ({row['infer_gb_s']:.4f}); {row['completed']}/{row['jobs']} completed",
            )
        result.add(
            f"{seconds} s model: $ per million jobs, background / sync / Step Functions Standard / Express",
            f"${per_million(background['total']):.2f} / ${per_million(sync['total']):.2f} / "
            f"${per_million(standard):.2f} / ${per_million(express):.2f}",
        )
    result.data = {"prices_as_of": PRICES_AS_OF, "phases": measured}
    result.notes.append(f"prices: us-east-1 list prices as of {PRICES_AS_OF} (bench/prices.py)")
    result.notes.append(
        "Lambda durations measured locally against moto (an order of magnitude for AWS); "
        "model latency in real time; background mode with the default BackgroundPollSchedule"
    )
    return result


def main() -> int:
    return scenario_main(run, __doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())
