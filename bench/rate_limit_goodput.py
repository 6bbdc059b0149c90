"""6. Provider rate limit goodput: the local model allows R requests/min (429 with Retry-After beyond
it, counted over a sliding window); a burst of jobs arrives at once. Reported: completions/min
achieved as a fraction of R, 429s received per completed job, jobs that failed (retries spent) and
jobs lost (never terminal, or in a DLQ: must be 0).

Baton's retry policy is the template's (MaxAttempts 5, full-jitter backoff from 2 s, never sooner
than Retry-After, SQS-native via the message's visibility). This is the baseline that a later
client-side rate limiter must beat.
"""

from __future__ import annotations

import time
from typing import Any

from bench.report import Result, scenario_main
from bench.stack import StackOptions, StackProcess, parallel, use_stack

RATE_RPM = 120
WINDOW_S = 5.0  # 10 requests per 5 s: providers enforce per-minute limits over shorter periods
LATENCY_MS = 200
BODY = {"input": {"prompt": "Classify this ticket: the invoice is wrong."}}


def run(*, quick: bool = False, stack: StackProcess | None = None) -> Result:
    burst = 20 if quick else 60
    options = StackOptions(
        simulator={
            "latency_ms": LATENCY_MS,
            "ms_per_token": 0,
            "rate_limit_rpm": RATE_RPM,
            "rate_limit_window_s": WINDOW_S,
        }
    )
    result = Result("rate_limit_goodput", f"6. Rate-limit goodput (R = {RATE_RPM}/min, burst of {burst})")
    with use_stack(stack, options) as live:
        live.set_simulator(latency_ms=LATENCY_MS, ms_per_token=0, rate_limit_rpm=0)
        with live.client() as client:  # warm-up without the limit
            warm = [live.submit(client, BODY) for _ in range(4)]
        live.wait_terminal([s.job_id for s in warm if s.job_id], timeout_s=60)
        time.sleep(1.0)
        live.clear_simulator_requests()
        live.set_simulator(rate_limit_rpm=RATE_RPM, rate_limit_window_s=WINDOW_S)
        ids: list[str] = []
        started_ms = time.time() * 1000

        def submit(index: int) -> None:
            with live.client() as client:
                for _ in range(burst // 8 + (1 if index < burst % 8 else 0)):
                    submitted = live.submit(client, BODY)
                    if submitted.job_id:
                        ids.append(submitted.job_id)

        with parallel(8, submit):
            pass
        # Longest path: 5 attempts with backoff up to min(300, 2 * 2^(n-1)) s and Retry-After.
        jobs = live.wait_terminal(ids, timeout_s=45 if quick else 150, every_s=0.5)
        requests = live.simulator_requests()
        dead_lettered = _dlq_depth(live, "InferDeadLetterQueue")
        live.set_simulator(rate_limit_rpm=0)
    completed = [job for job in jobs.values() if job and job["status"] == "completed"]
    failed = [job for job in jobs.values() if job and job["status"] == "failed"]
    lost = len(ids) - len(completed) - len(failed)
    finished_at = [float(job["created_ms"]) + float(job["timings"]["total_ms"] or 0) for job in completed]
    refused = sum(1 for entry in requests if entry.get("status") == 429)
    answered = sum(1 for entry in requests if entry.get("status") == 200)
    minutes = (max(finished_at) - started_ms) / 60000 if finished_at else float("nan")
    rate = len(completed) / minutes if finished_at else 0.0
    result.add(
        "jobs: completed / failed (retries spent) / lost", f"{len(completed)} / {len(failed)} / {lost}"
    )
    result.add("messages in the infer DLQ", str(dead_lettered))
    result.add(
        "completions per minute (goodput) / R",
        f"{rate:.1f} / {RATE_RPM} = {rate / RATE_RPM:.0%}",
    )
    result.add(
        "time to finish the burst (ideal at R)", f"{minutes * 60:.0f} s ({burst / RATE_RPM * 60:.0f} s)"
    )
    result.add(
        "429s per completed job",
        f"{refused / max(1, len(completed)):.2f} ({refused} x 429, {answered} x 200)",
    )
    errors: dict[str, int] = {}
    for job in failed:
        kind = (job.get("error") or {}).get("type", "?")
        errors[kind] = errors.get(kind, 0) + 1
    if errors:
        result.add("failed jobs' error types", ", ".join(f"{kind} {count}" for kind, count in errors.items()))
    result.data = {
        "rate_rpm": RATE_RPM,
        "window_s": WINDOW_S,
        "burst": burst,
        "completed": len(completed),
        "failed": len(failed),
        "lost": lost,
        "dead_lettered": dead_lettered,
        "goodput_per_min": rate,
        "model_429": refused,
        "model_200": answered,
        "errors": errors,
    }
    result.notes.append(
        f"the simulator admits {RATE_RPM * WINDOW_S / 60:.0f} requests per {WINDOW_S:g} s sliding window "
        f"(= {RATE_RPM}/min); model latency {LATENCY_MS} ms; infer concurrency 8 (template)"
    )
    return result


def _dlq_depth(live: StackProcess, logical_id: str) -> int:
    url = live.info["queues"].get(logical_id)
    if not url:
        return 0
    attributes: dict[str, Any] = live.aws("sqs").get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"])


def main() -> int:
    return scenario_main(run, __doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())
