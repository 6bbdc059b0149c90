"""6. Provider rate limit goodput: the local model allows R requests/min (or T tokens/min), enforced
over a 5 s sliding window (429 with Retry-After and OpenAI's x-ratelimit-* headers beyond it); a
burst of jobs arrives at once. Reported per case: completions (or tokens) per minute achieved as a
fraction of the limit, 429s received per completed job, jobs that failed and jobs lost (never
terminal, or in a DLQ: must be 0). Cases (BENCH_RATE_CASES=name,... picks some):

- `configured`: ProviderRequestsPerMinute = R, burst of 60;
- `learned`: ProviderRequestsPerMinute = 0, the limiter learns R from the headers, burst of 60;
- `tokens`: ProviderTokensPerMinute = T, burst of 60 (each job asks max_tokens);
- `burst600`: configured, burst of 600 (about 5 minutes; not in --quick);
- `fairness`: tenant A submits a backlog (BENCH_FAIR_BACKLOG, default 1,000 jobs; 100 in --quick),
  tenant B one job once A's backlog waits at the limiter (TenantMaxInFlight = 4): B's time to
  completion, and from its submission to its model call at the provider, beside the same job
  alone (FAIR_SAMPLES of each, one after another). Where B's extra time goes: its submission to
  the limiter's admission, the local AWS endpoint's round trip just before it, and the infer
  records handled per A job completed meanwhile (A's deferrals load the same endpoint).

Every case runs on a fresh stack (the limiter's state is per deployment), warmed first: a
deployment in use has its functions' environments started, but a fresh local stack on a busy
2-core machine takes 10-25 s for each environment's first model call (process start, imports),
which the limiter's turns would wait through. So before the clock starts, WARM_JOBS jobs run with
the simulator's limits off (on another model: the measured model's limiter state stays fresh, its
limits unlearned; the tokens case warms on its own model, so the usage it has seen is what a
deployment in use has), then the limits are set and a window passes.

Goodput is reported two ways, both always:
- from the burst's submission to its last completion (the first definition, kept): it includes
  the local pipeline's 2-3 s before the first model call and after the last, so a burst of 60 at
  R (29.5 s of calls) caps it near 92 % however well the limiter paces;
- at the provider, over the window in which calls waited on the limit: answered calls (or their
  tokens) between the first and the last answered call, n calls spanning n - 1 intervals (n - 1
  calls' tokens). This is what the limiter makes of the limit.
Each case also reports the answered calls per 10 s, when 429s came, and the deferrals (how
often, why, how long).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from baton_dev.simulator import DEFAULT_MODEL
from bench.report import Result, percentile, scenario_main
from bench.stack import OTHER_TENANT, StackOptions, StackProcess, parallel

RATE_RPM = 120
RATE_TPM = 3000
WINDOW_S = 5.0  # 10 requests per 5 s: providers enforce per-minute limits over shorter periods
LATENCY_MS = 200
BODY: dict[str, Any] = {"input": {"prompt": "Classify this ticket: the invoice is wrong."}}
TOKEN_BODY: dict[str, Any] = {**BODY, "parameters": {"max_tokens": 40}}
FAIR_CAP = 4
FAIR_SAMPLES = 3
WARM_JOBS = 16
WARM_MODEL = "baton-warmup"
CASES = ("configured", "learned", "tokens", "burst600", "fairness")


def run(*, quick: bool = False, stack: StackProcess | None = None) -> Result:
    del stack  # every case needs its own deployment (parameters, fresh limiter state)
    chosen = [c for c in os.environ.get("BENCH_RATE_CASES", ",".join(CASES)).split(",") if c in CASES]
    if quick and "burst600" in chosen:
        chosen.remove("burst600")
    burst = 20 if quick else 60
    result = Result(
        "rate_limit_goodput", f"6. Rate-limit goodput (R = {RATE_RPM}/min, T = {RATE_TPM} tokens/min)"
    )
    result.data = {"rate_rpm": RATE_RPM, "rate_tpm": RATE_TPM, "window_s": WINDOW_S, "cases": {}}
    for case in chosen:
        if case == "configured":
            data = _burst(
                result, "configured R", burst, {"ProviderRequestsPerMinute": str(RATE_RPM)}, tokens=False
            )
        elif case == "learned":
            data = _burst(result, "learned R", burst, {}, tokens=False)
        elif case == "tokens":
            data = _burst(
                result, "configured T", burst, {"ProviderTokensPerMinute": str(RATE_TPM)}, tokens=True
            )
        elif case == "burst600":
            data = _burst(
                result, "configured R, 600", 600, {"ProviderRequestsPerMinute": str(RATE_RPM)}, tokens=False
            )
        else:
            data = _fairness(
                result, backlog=100 if quick else int(os.environ.get("BENCH_FAIR_BACKLOG", "1000"))
            )
        result.data["cases"][case] = data
    result.notes.append(
        f"the simulator admits {RATE_RPM * WINDOW_S / 60:.0f} requests (or "
        f"{RATE_TPM * WINDOW_S / 60:.0f} tokens) per {WINDOW_S:g} s sliding window; "
        f"model latency {LATENCY_MS} ms; infer batch 10 x concurrency 8"
    )
    return result


def _limits(*, tokens: bool) -> dict[str, Any]:
    return {"rate_limit_tpm": RATE_TPM} if tokens else {"rate_limit_rpm": RATE_RPM}


def _options(parameters: dict[str, str], *, tokens: bool) -> StackOptions:
    simulator: dict[str, Any] = {
        "latency_ms": LATENCY_MS,
        "ms_per_token": 0,
        "rate_limit_window_s": WINDOW_S,
        "models": f"{DEFAULT_MODEL},{WARM_MODEL}",
        **_limits(tokens=tokens),
    }
    return StackOptions(simulator=simulator, parameters=parameters)


def _warm(live: StackProcess, body: dict[str, Any], *, tokens: bool) -> dict[str, Any]:
    """WARM_JOBS jobs through the stack with the simulator's limits off, then the limits back and
    one window's wait (see the module doc). Returns what the warm-up took."""
    started = time.monotonic()
    live.set_simulator(rate_limit_rpm=0, rate_limit_tpm=0)
    warm_body = body if tokens else {**body, "model": WARM_MODEL}
    ids: list[str] = []

    def submit(index: int) -> None:
        with live.client() as client:
            for _ in range(WARM_JOBS // 8):
                submitted = live.submit(client, warm_body)
                if submitted.job_id:
                    ids.append(submitted.job_id)

    with parallel(8, submit):
        pass
    jobs = live.wait_terminal(ids, timeout_s=600, every_s=0.5)
    completed = sum(1 for job in jobs.values() if job and job["status"] == "completed")
    live.set_simulator(**_limits(tokens=tokens))
    time.sleep(WINDOW_S)  # the simulator's window and the limiter's paces are idle again
    live.clear_simulator_requests()
    return {"jobs": len(ids), "completed": completed, "seconds": round(time.monotonic() - started, 1)}


def _burst(
    result: Result, label: str, burst: int, parameters: dict[str, str], *, tokens: bool
) -> dict[str, Any]:
    body = TOKEN_BODY if tokens else BODY
    with StackProcess(_options(parameters, tokens=tokens)) as live:
        warm = _warm(live, body, tokens=tokens)
        ids: list[str] = []
        started_ms = time.time() * 1000

        def submit(index: int) -> None:
            with live.client() as client:
                for _ in range(burst // 8 + (1 if index < burst % 8 else 0)):
                    submitted = live.submit(client, body)
                    if submitted.job_id:
                        ids.append(submitted.job_id)

        with parallel(8, submit):
            pass
        ideal_s = burst * 60 / RATE_RPM
        jobs = live.wait_terminal(ids, timeout_s=ideal_s * 3 + 120, every_s=0.5)
        requests = live.simulator_requests()
        dead_lettered = _dlq_depth(live, "InferDeadLetterQueue")
        deferrals = _deferrals(live)
    completed = [job for job in jobs.values() if job and job["status"] == "completed"]
    failed = [job for job in jobs.values() if job and job["status"] == "failed"]
    lost = len(ids) - len(completed) - len(failed)
    finished_at = [float(job["created_ms"]) + float(job["timings"]["total_ms"] or 0) for job in completed]
    refused = sum(1 for entry in requests if entry.get("status") == 429)
    answered = sum(1 for entry in requests if entry.get("status") == 200)
    minutes = (max(finished_at) - started_ms) / 60000 if finished_at else float("nan")
    if tokens:
        used = sum(int(job["usage"]["total_tokens"]) for job in completed)
        rate, limit, unit = (used / minutes if finished_at else 0.0), RATE_TPM, "tokens/min"
    else:
        rate, limit, unit = (len(completed) / minutes if finished_at else 0.0), RATE_RPM, "jobs/min"
    errors: dict[str, int] = {}
    for job in failed:
        kind = (job.get("error") or {}).get("type", "?")
        errors[kind] = errors.get(kind, 0) + 1
    result.add(
        f"({label}, burst {burst}) completed / failed / lost", f"{len(completed)} / {len(failed)} / {lost}"
    )
    result.add(
        f"({label}, burst {burst}) goodput ({unit}) / limit", f"{rate:.0f} / {limit} = {rate / limit:.0%}"
    )
    result.add(
        f"({label}, burst {burst}) 429s per completed job",
        f"{refused / max(1, len(completed)):.3f} ({refused} x 429, {answered} x 200)",
    )
    result.add(
        f"({label}, burst {burst}) burst finished in",
        f"{minutes * 60:.0f} s; in the infer DLQ: {dead_lettered}",
    )
    timeline = _timeline(requests, started_ms)
    at_provider = timeline["provider_tokens_per_min"] if tokens else timeline["provider_rate_per_min"]
    result.add(
        f"({label}, burst {burst}) goodput at the provider, first to last call ({unit}) / limit",
        f"{at_provider:.0f} / {limit} = {at_provider / limit:.0%}",
    )
    result.add(
        f"({label}, burst {burst}) at the provider",
        f"first call {timeline['first_call_s']:.1f} s, last {timeline['last_call_s']:.1f} s after the "
        f"burst; {timeline['provider_rate_per_min']:.0f} answered calls/min between them; "
        f"200s per 10 s: {timeline['answered_per_10s']}; 429s at {timeline['refused_at_s']} s",
    )
    result.add(
        f"({label}, burst {burst}) deferrals",
        f"{deferrals['count']} ({deferrals['by_reason']}); delay p50 / max "
        f"{deferrals['delay_p50_s']} / {deferrals['delay_max_s']} s",
    )
    if errors:
        result.add(f"({label}) failed jobs' error types", ", ".join(f"{k} {n}" for k, n in errors.items()))
    return {
        "warm_up": warm,
        "timeline": timeline,
        "deferrals": deferrals,
        "burst": burst,
        "parameters": parameters,
        "completed": len(completed),
        "failed": len(failed),
        "lost": lost,
        "dead_lettered": dead_lettered,
        "goodput_per_min": rate,
        "goodput_fraction": rate / limit,
        "goodput_at_provider_per_min": at_provider,
        "goodput_at_provider_fraction": at_provider / limit,
        "model_429": refused,
        "model_200": answered,
        "errors": errors,
        "seconds": minutes * 60,
    }


def _fairness(result: Result, *, backlog: int) -> dict[str, Any]:
    parameters = {"ProviderRequestsPerMinute": str(RATE_RPM), "TenantMaxInFlight": str(FAIR_CAP)}
    with StackProcess(_options(parameters, tokens=False)) as live:
        warm = _warm(live, BODY, tokens=False)
        alone = [_single_job(live) for _ in range(FAIR_SAMPLES)]
        big: list[str] = []

        def submit(index: int) -> None:
            with live.client() as client:
                for _ in range(backlog // 8 + (1 if index < backlog % 8 else 0)):
                    submitted = live.submit(client, BODY)
                    if submitted.job_id:
                        big.append(submitted.job_id)

        with parallel(8, submit):
            pass
        # Locally the stages before infer pass ~2-5 jobs/s, so a job submitted right after A's
        # backlog first waits for it in the ingest and extract queues: the local pipeline's
        # throughput, not the limiter's fairness (on AWS those stages scale out). B is submitted
        # once A's backlog waits at the limiter (only delayed messages left in the infer queue).
        queued_s = _wait_at_limiter(live, timeout_s=1800)
        completed_before = _completed(live, big)
        records_before = _infer_records(live)
        behind = [_single_job(live) for _ in range(FAIR_SAMPLES)]
        big_completed = _completed(live, big)
        # What A's backlog costs the stack while B runs: infer records handled (each a receive,
        # a few DynamoDB calls and, for a deferral, a send) per A job that completed meanwhile.
        handled = _infer_records(live) - records_before - FAIR_SAMPLES
        churn = handled / max(1, big_completed - completed_before)
        # A's jobs are not waited for: the stack stops with them still queued.
    refill_s = 60 / RATE_RPM

    def listed(samples: list[dict[str, float]], key: str) -> str:
        return " / ".join(f"{sample[key]:.2f}" for sample in samples)

    result.add(
        f"(fairness, cap {FAIR_CAP}) tenant B's job, alone vs behind A's {backlog}: to completion (s)",
        f"alone {listed(alone, 'total_s')}; behind {listed(behind, 'total_s')} "
        f"(one refill = {refill_s:.1f} s; A's backlog reached the limiter in {queued_s:.0f} s; "
        f"A's jobs done by then: {big_completed} of {len(big)})",
    )
    result.add(
        f"(fairness, cap {FAIR_CAP}) tenant B's job: from submission to its model call (s)",
        f"alone {listed(alone, 'to_call_s')}; behind {listed(behind, 'to_call_s')}",
    )
    # Where B's extra time goes: reaching the limiter's admission (the infer queue, a free infer
    # invocation, the AWS calls before it), then from admission to the call (its send slot).
    result.add(
        f"(fairness, cap {FAIR_CAP}) tenant B's job: from submission to the limiter's admission (s)",
        f"alone {listed(alone, 'to_admitted_s')}; behind {listed(behind, 'to_admitted_s')}",
    )
    result.add(
        f"(fairness, cap {FAIR_CAP}) the local AWS endpoint's round trip just before B's submission "
        "(a DynamoDB GetItem, median of 5, ms)",
        f"alone {listed(alone, 'aws_ms')}; behind {listed(behind, 'aws_ms')}; "
        f"infer records handled per A job completed meanwhile: {churn:.1f}",
    )
    return {
        "backlog_at_limiter_after_s": queued_s,
        "warm_up": warm,
        "backlog": backlog,
        "alone": alone,
        "behind": behind,
        "refill_s": refill_s,
        "backlog_completed_meanwhile": big_completed,
        "infer_records_per_backlog_completion": churn,
    }


def _completed(live: StackProcess, ids: list[str]) -> int:
    done = live.wait_terminal(ids, timeout_s=0)
    return sum(1 for job in done.values() if job and job["status"] == "completed")


def _infer_records(live: StackProcess) -> int:
    source = live.metrics()["sources"].get("InferFunctionCommands", {})
    return int(source.get("records_ok", 0)) + int(source.get("records_failed", 0))


def _aws_round_trip_ms(live: StackProcess, samples: int = 5) -> float:
    """The local AWS endpoint's latency as the functions see it now: a GetItem of a missing key."""
    ddb, table = live.aws("dynamodb"), live.info["jobs_table"]
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        ddb.get_item(TableName=table, Key={"pk": {"S": "bench#probe"}, "sk": {"S": "probe"}})
        times.append((time.perf_counter() - started) * 1000)
    return sorted(times)[len(times) // 2]


def _single_job(live: StackProcess) -> dict[str, float]:
    """Tenant B's one job: seconds to completion, from its submission (the job's created_ms) to
    its model call at the provider, and to the limiter's admission (its `timings.queued_ms`: a
    prompt job's infer step starts once admitted); and the local AWS round trip just before it."""
    aws_ms = _aws_round_trip_ms(live)
    with live.client(other_tenant=True) as client:
        started = time.monotonic()
        submitted = live.submit(client, BODY)
    assert submitted.job_id, f"tenant B's job was refused ({submitted.status})"
    jobs = live.wait_terminal([submitted.job_id], timeout_s=600, every_s=0.2, tenant=OTHER_TENANT)
    elapsed = time.monotonic() - started
    job = jobs.get(submitted.job_id) or {}
    if job.get("status") != "completed":
        raise RuntimeError(f"tenant B's job ended {job.get('status')}")
    to_call_s = submission_to_call_s(submitted.job_id, float(job["created_ms"]), live.simulator_requests())
    queued_ms = (job.get("timings") or {}).get("queued_ms")
    to_admitted_s = float(queued_ms) / 1000 if queued_ms is not None else float("nan")
    return {"total_s": elapsed, "to_call_s": to_call_s, "to_admitted_s": to_admitted_s, "aws_ms": aws_ms}


def submission_to_call_s(job_id: str, created_ms: float, requests: list[dict[str, Any]]) -> float:
    """Seconds from a job's submission to its first answered model call in the simulator's log."""
    calls = [
        float(entry["ts"])
        for entry in requests
        if entry.get("job_id") == job_id and entry.get("status") == 200
    ]
    if not calls:
        raise RuntimeError(f"the simulator saw no answered call of job {job_id}")
    return min(calls) - created_ms / 1000


def _timeline(requests: list[dict[str, Any]], started_ms: float) -> dict[str, Any]:
    """When the provider saw the calls: what the limiter made of the limit, apart from the time the
    pipeline takes before the first call and after the last one."""
    calls = sorted(
        (
            float(entry["ts"]) - started_ms / 1000,
            int(entry.get("status") or 0),
            int(entry.get("prompt_tokens") or 0) + int(entry.get("completion_tokens") or 0),
        )
        for entry in requests
        if "chat" in str(entry.get("path", "")) or "responses" in str(entry.get("path", ""))
    )
    answered = [at for at, status, _ in calls if status == 200]
    # n calls span n - 1 intervals: the tokens of all but the last
    answered_tokens = sum(used for _, status, used in calls if status == 200) - (
        next((used for _, status, used in reversed(calls) if status == 200), 0)
    )
    refused = [round(at, 1) for at, status, _ in calls if status == 429]
    buckets: list[int] = []
    for at in answered:
        index = int(at // 10)
        buckets.extend([0] * (index + 1 - len(buckets)))
        buckets[index] += 1
    span_s = answered[-1] - answered[0] if len(answered) > 1 else 0.0
    return {
        "first_call_s": answered[0] if answered else float("nan"),
        "last_call_s": answered[-1] if answered else float("nan"),
        # n calls span n - 1 intervals
        "provider_rate_per_min": (len(answered) - 1) * 60 / span_s if span_s else float("nan"),
        "provider_tokens_per_min": answered_tokens * 60 / span_s if span_s else float("nan"),
        "answered_per_10s": buckets,
        "refused_at_s": refused,
    }


def _deferrals(live: StackProcess) -> dict[str, Any]:
    """The infer function's "model call deferred" log lines: how often and how long calls waited
    in a delayed message."""
    path = Path(str(live.info.get("logs", ""))) / "InferFunction.log"
    reasons: dict[str, int] = {}
    delays: list[float] = []
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            if "model call deferred" not in line:
                continue
            try:
                entry = json.loads(line[line.index("{") :])
            except ValueError:
                continue
            reason = str(entry.get("reason", "?"))
            reasons[reason] = reasons.get(reason, 0) + 1
            delays.append(float(entry.get("wait_s", entry.get("delay_s", 0))))
    return {
        "count": len(delays),
        "by_reason": reasons,
        "delay_p50_s": round(percentile(delays, 50), 2) if delays else None,
        "delay_max_s": round(max(delays), 2) if delays else None,
    }


def _wait_at_limiter(live: StackProcess, *, timeout_s: float) -> float:
    """Seconds until no job waits before the limiter: the ingest and extract queues empty (none
    in flight either), and none visible in the infer queue (the rest are delayed messages:
    commands waiting for their turn, or being sent)."""
    sqs = live.aws("sqs")
    started = time.monotonic()
    counted = {
        "IngestQueue": ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        "ExtractQueue": ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        "InferQueue": ["ApproximateNumberOfMessages"],
    }
    while time.monotonic() - started < timeout_s:
        waiting = 0
        for queue, names in counted.items():
            attributes = sqs.get_queue_attributes(QueueUrl=live.info["queues"][queue], AttributeNames=names)
            waiting += sum(int(attributes["Attributes"][name]) for name in names)
        if not waiting:
            break
        time.sleep(1.0)
    return time.monotonic() - started


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
