"""2. Pipeline overhead: with the local model at a fixed latency L, end-to-end job time minus L.

Each job has a small document (so the extract stage runs) and a webhook (so the notify stage runs);
two clients each submit one job at a time and wait for its webhook, so the figures are the
pipeline's own overhead, not queueing under load. Stages come from the job's own timestamps
(`step_started_ms`, `timings`) and the webhook's arrival; the handler time of each stage (measured
where it runs) tells the work apart from the hop (SQS, poller, EventBridge rule) before it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from bench.report import Result, fmt_ms, percentile, scenario_main
from bench.stack import StackOptions, StackProcess, WebhookSink, parallel, use_stack

LATENCY_MS = 250
DOCUMENT = "# Notes\n\nRevenue grew 12% in the quarter. Costs fell. The team shipped the new API.\n" * 20


def run(*, quick: bool = False, stack: StackProcess | None = None) -> Result:
    clients, per_client = (2, 4) if quick else (2, 15)
    options = StackOptions(simulator={"latency_ms": LATENCY_MS, "ms_per_token": 0})
    result = Result("pipeline_overhead", f"2. Pipeline overhead (model latency L = {LATENCY_MS} ms)")
    rows: list[dict[str, Any]] = []
    lock = threading.Lock()
    with use_stack(stack, options) as live, WebhookSink() as sink:
        if stack is not None:
            live.set_simulator(latency_ms=LATENCY_MS, ms_per_token=0)
        live.put_document("notes.md", DOCUMENT)
        body = {
            "input": {"prompt": "Summarize the notes."},
            "document": {"id": "notes.md"},
            "webhook": {"url": sink.url},
        }
        with live.client() as client:  # warm-up
            warm = live.submit(client, body)
            if warm.job_id:
                sink.wait(warm.job_id, 60)
        live.reset()

        def client_loop(index: int) -> None:
            with live.client() as client:
                for _ in range(per_client):
                    submitted = live.submit(client, body)
                    if submitted.job_id is None:
                        continue
                    arrived = sink.wait(submitted.job_id, 60)
                    with lock:
                        rows.append({"job_id": submitted.job_id, "post": submitted, "webhook_ms": arrived})

        with parallel(clients, client_loop):
            pass
        time.sleep(0.5)  # the notify handler records its timing after delivering
        jobs = live.jobs([row["job_id"] for row in rows])
        metrics = live.metrics()
        if stack is not None:
            live.set_simulator(latency_ms=0)

    stages: dict[str, list[float]] = {
        name: []
        for name in (
            "accept (POST -> 202)",
            "queue wait (accept -> extract starts)",
            "extract",
            "hop extract -> infer",
            "infer minus L",
            "completed -> webhook received",
            "end to end minus L",
        )
    }
    for row in rows:
        job = jobs.get(row["job_id"])
        if not job or job["status"] != "completed" or row["webhook_ms"] is None:
            continue
        started = job["step_started_ms"]
        timings = job["timings"]
        created = float(job["created_ms"])
        completed_at = created + float(timings["total_ms"])
        extract_end = float(started["extract"]) + float(timings["extract_ms"])
        stages["accept (POST -> 202)"].append(row["post"].ms)
        stages["queue wait (accept -> extract starts)"].append(float(started["extract"]) - created)
        stages["extract"].append(float(timings["extract_ms"]))
        stages["hop extract -> infer"].append(float(started["infer"]) - extract_end)
        stages["infer minus L"].append(float(timings["infer_ms"]) - LATENCY_MS)
        stages["completed -> webhook received"].append(float(row["webhook_ms"]) - completed_at)
        stages["end to end minus L"].append(float(row["webhook_ms"]) - row["post"].sent_epoch_ms - LATENCY_MS)
    handlers = {
        name: metrics["invocations"][function]["ms"]
        for name, function in (
            ("extract", "ExtractFunction"),
            ("infer", "InferFunction"),
            ("notify", "NotifyFunction"),
        )
    }
    completed = len(stages["end to end minus L"])
    result.add("jobs (completed with webhook / submitted)", f"{completed} / {len(rows)}")
    for name, values in stages.items():
        result.add(
            f"{name}: p50 / p99", f"{fmt_ms(percentile(values, 50))} / {fmt_ms(percentile(values, 99))} ms"
        )
    result.add(
        "handler time p50: extract / infer - L / notify",
        f"{fmt_ms(percentile(handlers['extract'], 50))} / "
        f"{fmt_ms(percentile(handlers['infer'], 50) - LATENCY_MS)} / "
        f"{fmt_ms(percentile(handlers['notify'], 50))} ms",
    )
    result.data = {
        "latency_ms": LATENCY_MS,
        "stages_ms": stages,
        "handler_ms": handlers,
        "jobs": completed,
    }
    result.notes.append(
        "'queue wait' and the hops include the local poller's long poll and moto; 'completed -> webhook' "
        "is EventBridge rule -> notify queue -> poller -> notify handler -> signed POST"
    )
    return result


def main() -> int:
    return scenario_main(run, __doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())
