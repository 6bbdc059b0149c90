"""4. Cost per million jobs (the model's own price excluded).

Every AWS request a job makes is counted where the handlers run (bench/stack.py: botocore event
hooks), with its billing units, and priced with layers/baton/baton/prices.py:
- SQS: every send, the event source's receives that returned messages and its batch deletes
  (AWS bills the Lambda poller's ReceiveMessage/DeleteMessageBatch as ordinary SQS requests; its
  empty long polls are an idle, per-month cost, listed apart), plus EventBridge's delivery of the
  terminal event to the notify queue (made by EventBridge, so not seen locally: added, 1 per job);
- DynamoDB: read/write request units from item sizes (strong reads 4 KB, eventual half; writes
  1 KB; failed conditional writes still bill; +1 WRU when the sparse open-jobs index changes);
- S3 by request class, EventBridge events per 64 KB, API Gateway REST requests;
- Lambda: invocations x measured handler duration (rounded up to 1 ms) x the template's memory.
Durations are measured on this machine against moto: on AWS the AWS calls are network round trips
of a few ms each; treat the Lambda line as an order of magnitude.

Compared with the same steps orchestrated by Step Functions: the stage queues go (no SQS), the
Lambdas and the table stay; Standard bills every state entered (Choice, each task, Succeed),
Express bills the execution (64 MB, 100 ms rounding) for the time the tasks run.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from baton.prices import (
    PRICES,
    PRICES_AS_OF,
    S3_FREE,
    S3_PUT_CLASS,
    express_duration_cost,
    lambda_cost,
    per_million,
)
from bench.report import Result, scenario_main
from bench.stack import StackOptions, StackProcess, WebhookSink

EXCLUDED_ROLES = ("setup", "control", "other", "SweeperFunction")
DOCUMENT = (
    "# Contract\n\nThe supplier delivers monthly. Payment is due in 30 days. Either party may end it.\n" * 10
)
MINUTES_PER_MONTH = 43_800
INFER_BATCH_SIZE = 10  # template.yaml InferBatchSize
MODEL_LATENCIES_S = (1, 10, 30)
LOG_BYTES_PER_GB = 1024**3


def job_units(metrics: dict[str, Any], jobs: int, memory: dict[str, int]) -> dict[str, Any]:
    """Billing units per job from one phase's metrics."""
    units: dict[str, float] = defaultdict(float)
    calls: dict[str, float] = defaultdict(float)
    for row in metrics["aws"]:
        role, service, operation = row["role"], row["service"], row["operation"]
        if role.startswith(EXCLUDED_ROLES) or operation == "ReceiveMessage:empty":
            continue
        calls[f"{service}:{operation}"] += row["calls"] / jobs
        if service == "sqs":
            units["sqs_requests"] += row["requests"] / jobs
        elif service == "dynamodb":
            units["dynamodb_rru"] += row["rru"] / jobs
            units["dynamodb_wru"] += row["wru"] / jobs
        elif service == "s3" and operation not in S3_FREE:
            key = "s3_put" if operation in S3_PUT_CLASS else "s3_get"
            units[key] += row["requests"] / jobs
        elif service == "events":
            units["eventbridge_events"] += row["requests"] / jobs
    lambdas: dict[str, dict[str, float]] = {}
    for name, stats in metrics["invocations"].items():
        if name in EXCLUDED_ROLES or not stats["ms"]:
            continue
        billed = sum(math.ceil(ms) for ms in stats["ms"])
        lambdas[name] = {
            "invocations": len(stats["ms"]) / jobs,
            "billed_ms": billed / jobs,
            "memory_mb": memory.get(name, stats["memory_mb"]),
        }
    return {"units": dict(units), "calls": dict(calls), "lambdas": lambdas}


def price(
    units: Mapping[str, float], lambdas: Mapping[str, Mapping[str, float]], extra: Mapping[str, float]
) -> dict[str, float]:
    """$ per job, by line item."""
    p = PRICES
    lines = {
        "SQS": (units.get("sqs_requests", 0) + extra.get("sqs_requests", 0)) * p.sqs_per_request,
        "DynamoDB": units.get("dynamodb_rru", 0) * p.dynamodb_per_rru
        + units.get("dynamodb_wru", 0) * p.dynamodb_per_wru,
        "S3": units.get("s3_put", 0) * p.s3_per_put + units.get("s3_get", 0) * p.s3_per_get,
        "EventBridge": units.get("eventbridge_events", 0) * p.eventbridge_per_event,
        "API Gateway": extra.get("apigw_requests", 0) * p.apigw_rest_per_request,
        "CloudWatch Logs": extra.get("log_bytes", 0) / LOG_BYTES_PER_GB * p.cloudwatch_logs_per_gb,
    }
    for name, stats in lambdas.items():
        lines[f"Lambda {name.removesuffix('Function')}"] = lambda_cost(
            stats["invocations"], stats["billed_ms"], int(stats["memory_mb"])
        )
    return lines


def _phase(live: StackProcess, sink: WebhookSink, body: dict[str, Any], jobs: int) -> dict[str, Any]:
    live.reset()
    notified_before = int(live.metrics()["sources"]["NotifyFunctionTerminalEvents"]["records_ok"])
    log_before = int(live.metrics()["handler_log_bytes"])
    with live.client() as client:
        ids = [s.job_id for s in (live.submit(client, body) for _ in range(jobs)) if s.job_id]
    done = live.wait_terminal(ids, timeout_s=120)
    completed = sum(1 for job in done.values() if job and job["status"] == "completed")
    live.wait_records("NotifyFunctionTerminalEvents", notified_before + len(ids), timeout_s=60)
    if "webhook" in body:
        sink.wait_all(ids, timeout_s=60)
    metrics = live.metrics()
    return {
        "jobs": len(ids),
        "completed": completed,
        "metrics": metrics,
        "log_bytes": int(metrics["handler_log_bytes"]) - log_before,
    }


def run(*, quick: bool = False, stack: StackProcess | None = None) -> Result:
    """Always on a stack of its own: it sizes DynamoDB updates and runs the sweeper every 2 s."""
    del stack
    jobs = 6 if quick else 20
    result = Result("cost", "4. Cost per million jobs (model excluded)")
    options = StackOptions(resolve_update_sizes=True, schedule_every_s=2)
    with StackProcess(options) as live, WebhookSink() as sink:
        memory = {str(k): int(v) for k, v in live.info["memory_mb"].items()}
        live.put_document("contract.md", DOCUMENT)
        with live.client() as client:  # warm-up (cold starts are not per-job costs)
            warm = [live.submit(client, {"input": {"prompt": "warm"}}) for _ in range(2)]
        live.wait_terminal([s.job_id for s in warm if s.job_id], timeout_s=60)
        phases = {
            "prompt job, polled once": _phase(live, sink, {"input": {"prompt": "Summarize: costs."}}, jobs),
            "document job + webhook": _phase(
                live,
                sink,
                {
                    "input": {"prompt": "List the obligations."},
                    "document": {"id": "contract.md"},
                    "webhook": {"url": sink.url},
                },
                jobs,
            ),
        }
        # One GET /v1/jobs/{id}: what each poll adds.
        live.reset()
        polls = 10
        with live.client() as client:
            job_id = warm[0].job_id
            for _ in range(polls):
                client.get(f"/v1/jobs/{job_id}")
        poll_metrics = live.metrics()
        live.reset()
        time.sleep(4.5)  # the sweeper runs every 2 s here (every minute on AWS)
        after = live.metrics()
        sweeper = after["invocations"].get("SweeperFunction", {})
        sweeper_calls = [row for row in after["aws"] if row["role"] == "SweeperFunction"]

    priced: dict[str, Any] = {}
    for name, phase in phases.items():
        measured = job_units(phase["metrics"], phase["jobs"], memory)
        polled = name.startswith("prompt")
        extra = {
            "sqs_requests": 1.0,  # EventBridge -> notify queue delivery of the terminal event
            "apigw_requests": 1.0,
            "log_bytes": phase["log_bytes"] / phase["jobs"],
        }
        lines = price(measured["units"], measured["lambdas"], extra)
        if polled:
            poll = job_units(poll_metrics, polls, memory)
            poll_lines = price(poll["units"], poll["lambdas"], {"apigw_requests": 1.0})
            for line, cost in poll_lines.items():
                lines[f"{line} (poll)"] = cost
        total = sum(lines.values())
        stage_sqs = lines["SQS"]
        durations = sum(
            stats["billed_ms"] / max(stats["invocations"], 1e-9)
            for function, stats in measured["lambdas"].items()
            if function not in ("ApiFunction", "AuthorizerFunction")
        )
        tasks = sum(
            1
            for function in measured["lambdas"]
            if function in ("ExtractFunction", "InferFunction", "NotifyFunction")
        )
        transitions = tasks + 2  # a Choice (document or not), each task, Succeed
        standard = total - stage_sqs + transitions * PRICES.sfn_standard_per_transition
        express = total - stage_sqs + PRICES.sfn_express_per_request + express_duration_cost(durations)
        priced[name] = {
            **measured,
            "extra": extra,
            "lines": lines,
            "total": total,
            "completed": phase["completed"],
            "jobs": phase["jobs"],
            "sfn_standard_total": standard,
            "sfn_express_total": express,
            "sfn_transitions": transitions,
            "task_ms": durations,
        }
        units = measured["units"]
        lambdas = measured["lambdas"]
        invocations = sum(stats["invocations"] for stats in lambdas.values())
        gb_s = sum(stats["memory_mb"] / 1024 * stats["billed_ms"] / 1000 for stats in lambdas.values())
        result.add(
            f"{name}: per job",
            f"SQS {units.get('sqs_requests', 0) + 1:.1f} req, "
            f"DynamoDB {units.get('dynamodb_rru', 0):.1f} RRU + "
            f"{units.get('dynamodb_wru', 0):.1f} WRU, S3 {units.get('s3_put', 0):.0f} PUT + "
            f"{units.get('s3_get', 0):.0f} GET, EventBridge {units.get('eventbridge_events', 0):.0f}, "
            f"Lambda {invocations:.1f} inv / {gb_s:.3f} GB-s",
        )
        top = sorted(lines.items(), key=lambda item: -item[1])[:4]
        result.add(
            f"{name}: $ per million jobs",
            f"${per_million(total):.2f} ("
            + ", ".join(f"{line} {per_million(c):.2f}" for line, c in top)
            + ")",
        )
        result.add(
            f"{name}: same steps on Step Functions Standard / Express",
            f"${per_million(standard):.2f} ({transitions} transitions) / ${per_million(express):.2f}",
        )
    infer_memory = memory.get("InferFunction", 512)
    per_model_second = infer_memory / 1024 * PRICES.lambda_per_gb_second_arm64
    express_second = express_duration_cost(1000) - express_duration_cost(0)
    result.add(
        "each second the model takes adds (infer Lambda waits)",
        f"${per_million(per_model_second):.2f}/M jobs (+${per_million(express_second):.2f} on Express)",
    )
    # Under a full batch the infer invocation waits for InferBatchSize calls at once: each job pays
    # a batch's share of the wait. On Step Functions each job's infer task waits alone (and an
    # Express execution is billed for its duration as well).
    batch = INFER_BATCH_SIZE
    result.add(
        f"each model-second under a full batch of {batch} (the $0.50/M target)",
        f"${per_million(per_model_second / batch):.2f}/M jobs",
    )
    prompt = priced["prompt job, polled once"]
    latencies: dict[str, dict[str, float]] = {}
    for seconds in MODEL_LATENCIES_S:
        latencies[str(seconds)] = {
            "baton": prompt["total"] + seconds * per_model_second / batch,
            "sfn_standard": prompt["sfn_standard_total"] + seconds * per_model_second,
            "sfn_express": prompt["sfn_express_total"] + seconds * (per_model_second + express_second),
        }
        row = latencies[str(seconds)]
        result.add(
            f"prompt job at a {seconds} s model call: Baton / Standard / Express",
            f"${per_million(row['baton']):.2f} / ${per_million(row['sfn_standard']):.2f} / "
            f"${per_million(row['sfn_express']):.2f} per million",
        )
    fixed = _fixed_monthly(sweeper, sweeper_calls, memory)
    result.add(
        "fixed per month: sweeper (every minute) + idle pollers",
        f"${fixed['sweeper']:.2f} + ${fixed['idle_polling']:.2f}",
    )
    result.data = {
        "prices_as_of": PRICES_AS_OF,
        "phases": priced,
        "fixed_monthly": fixed,
        "model_latency_totals": latencies,
        "infer_batch_size": batch,
    }
    result.notes.append(f"prices: us-east-1 list prices as of {PRICES_AS_OF} (layers/baton/baton/prices.py)")
    result.notes.append(
        "idle pollers: assumes 5 long-polling (20 s) pollers per SQS event source (5 sources); "
        "Lambda durations measured locally against moto"
    )
    return result


def _fixed_monthly(
    sweeper: dict[str, Any], calls: list[dict[str, Any]], memory: dict[str, int]
) -> dict[str, float]:
    runs = len(sweeper.get("ms", []))
    sweeper_cost = 0.0
    if runs:
        billed = sum(math.ceil(ms) for ms in sweeper["ms"]) / runs
        per_run = lambda_cost(1, billed, memory.get("SweeperFunction", 512))
        per_run += (
            sum(row["requests"] for row in calls if row["service"] == "sqs") / runs * PRICES.sqs_per_request
        )
        per_run += sum(row["rru"] for row in calls) / runs * PRICES.dynamodb_per_rru
        sweeper_cost = per_run * MINUTES_PER_MONTH
    idle_receives = 5 * 5 * 3 * MINUTES_PER_MONTH  # sources x pollers x 20 s long polls per minute
    return {
        "sweeper": sweeper_cost,
        "idle_polling": idle_receives * PRICES.sqs_per_request,
        "sweeper_runs": runs,
    }


def main() -> int:
    return scenario_main(run, __doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())
