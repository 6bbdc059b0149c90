"""9. A 1 MB document by map-reduce, and a batch of many lines, through the local stack.

Document: 1 MB of text uploaded through `POST /v1/documents` (presigned PUT), one job over it
(`long_document: map_reduce`, the simulator's 32,768-token context): model calls (chunks and
combines, from the simulator's log), wall time, tokens, the AWS requests the job made (counted
where the handlers run, bench/stack.py) and their list price, and the model's at a listed price.

Batch: a JSONL document of `BENCH_BATCH_LINES` lines (default 1,000, so `make bench` stays within
about 10 minutes for it; the issue's 10,000 take about 75 min at 2.3 lines/s on 2 cores; 200
with --quick) through `POST /v1/batches`: lines per second from the POST to the batch's end, the
AWS requests per line (by function) and their price per million lines, beside the same lines on
- Step Functions Distributed Map: one Express child workflow per line running the infer Lambda,
  which waits for its model call alone (the infer time per line is the measured one: on AWS it
  would be the model's latency); its Lambda + the Express request + its duration;
- OpenAI's Batch API: no AWS work at all, and the model at half its listed price (results within
  24 h, where Baton's lines finish at the provider's rate).
Prices from baton/prices.py only (us-east-1 list prices; a listed small-model price for tokens).
The wait for the batch allows 0.67 lines/s (`BENCH_BATCH_WAIT_S` to change it); a batch still
running when it ends is reported NOT FINISHED, with the lines that ended.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import httpx

from baton.prices import (
    LISTED_MODEL,
    LISTED_MODEL_PRICE,
    OPENAI_BATCH_DISCOUNT,
    PRICES,
    PRICES_AS_OF,
    express_duration_cost,
    lambda_cost,
    per_million,
)
from baton_dev.client import BATCH_TERMINAL_STATUSES as BATCH_TERMINAL
from bench.cost import EXCLUDED_ROLES, job_units, price
from bench.report import Result, scenario_main
from bench.stack import StackOptions, StackProcess

DOCUMENT_BYTES = 1_000_000


def _document_text(size: int) -> bytes:
    lines = []
    total = 0
    day = 0
    while total < size:
        day += 1
        line = f"Day {day}: depot {day % 17} shipped {day * 7 % 1000} crates, invoice {day:07d}.\n"
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()[:size]


def _upload(client: httpx.Client, filename: str, data: bytes) -> str:
    created = client.post("/v1/documents", json={"filename": filename})
    created.raise_for_status()
    body = created.json()
    upload = body["upload"]
    httpx.request(upload["method"], upload["url"], content=data, headers=upload["headers"], timeout=120)
    return str(body["id"])


def _memory(live: StackProcess) -> dict[str, int]:
    return {str(k): int(v) for k, v in live.info["memory_mb"].items()}


def _model_cost(prompt_tokens: float, completion_tokens: float) -> float:
    return LISTED_MODEL_PRICE.cost(int(prompt_tokens), int(completion_tokens))


def _document(live: StackProcess, result: Result) -> dict[str, Any]:
    data = _document_text(DOCUMENT_BYTES)
    live.reset()
    live.clear_simulator_requests()
    with live.client(timeout=120) as client:
        document_id = _upload(client, "ledger.txt", data)
        started = time.monotonic()
        body = {"input": {"prompt": "Which depot shipped the most crates?"}, "document": {"id": document_id}}
        accepted = client.post("/v1/jobs", json=body)
        accepted.raise_for_status()
        job_id = str(accepted.json()["id"])
        done = live.wait_terminal([job_id], timeout_s=900)
        seconds = time.monotonic() - started
        job = client.get(f"/v1/jobs/{job_id}").json()
    calls = [entry for entry in live.simulator_requests() if entry.get("job_id") == job_id]
    paid = [entry for entry in calls if entry.get("status") == 200]
    prompt = sum(int(entry.get("prompt_tokens") or 0) for entry in paid)
    completion = sum(int(entry.get("completion_tokens") or 0) for entry in paid)
    measured = job_units(live.metrics(), 1, _memory(live))
    lines = price(measured["units"], measured["lambdas"], {"apigw_requests": 3.0})  # upload, POST, GET
    aws = sum(lines.values())
    document = job.get("document") or {}
    status = (done.get(job_id) or {}).get("status")
    result.add(
        "1 MB document: status, chunks, model calls (paid), time",
        f"{status}: {document.get('chars')} chars in {document.get('chunks')} chunks, "
        f"{len(calls)} calls ({len(paid)} paid), {seconds:.1f} s",
    )
    result.add(
        "1 MB document: tokens in / out, largest prompt",
        f"{prompt} / {completion}, {max((int(e.get('prompt_tokens') or 0) for e in paid), default=0)}",
    )
    result.add(
        f"1 MB document: AWS $ (requests {sum(measured['calls'].values()):.0f}) / model $ at {LISTED_MODEL}",
        f"${aws:.6f} / ${_model_cost(prompt, completion):.4f}",
    )
    return {
        "job_id": job_id,
        "status": status,
        "document": document,
        "seconds": seconds,
        "calls": len(calls),
        "paid_calls": len(paid),
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "aws_usd": aws,
        "aws_lines": lines,
        "aws_calls": measured["calls"],
    }


def _batch(live: StackProcess, result: Result, lines_total: int) -> dict[str, Any]:
    jsonl = "".join(
        json.dumps(
            {"custom_id": f"line-{i}", "input": {"prompt": f"Summarize: crate {i} left the depot at noon."}}
        )
        + "\n"
        for i in range(lines_total)
    ).encode()
    live.reset()
    live.clear_simulator_requests()
    with live.client(timeout=120) as client:
        document_id = _upload(client, "lines.jsonl", jsonl)
        started = time.monotonic()
        created = client.post("/v1/batches", json={"input_document_id": document_id})
        created.raise_for_status()
        batch_id = str(created.json()["id"])
        accepted_s = time.monotonic() - started
        # About 2.3 lines/s on a 2-core machine at load 5 (500 lines in 220 s); slower when loaded:
        # the wait allows 0.67 lines/s (10,000 lines: 4 h 10 min), or BENCH_BATCH_WAIT_S.
        wait_s = float(os.environ.get("BENCH_BATCH_WAIT_S") or max(600.0, lines_total * 1.5))
        deadline = started + wait_s
        # Status polls are the client's requests (through the API function): every 2 s for up to
        # 1,000 lines, then less often, so they stay a small, reported part of the per-line figure.
        poll_s = 2.0 if lines_total <= 1_000 else 10.0
        batch: dict[str, Any] = created.json()
        polls = 0
        while batch["status"] not in BATCH_TERMINAL and time.monotonic() < deadline:
            time.sleep(poll_s)
            batch = client.get(f"/v1/batches/{batch_id}").json()
            polls += 1
        seconds = time.monotonic() - started
    counts = batch["request_counts"]
    ended = counts["completed"] + counts["failed"] + counts["cancelled"]
    finished = batch["status"] in BATCH_TERMINAL
    memory = _memory(live)
    metrics = live.metrics()
    measured = job_units(metrics, max(ended, 1), memory)
    by_function = _requests_by_function(metrics, max(ended, 1))
    requests = [entry for entry in live.simulator_requests() if entry.get("status") == 200]
    prompt = sum(int(entry.get("prompt_tokens") or 0) for entry in requests) / max(ended, 1)
    completion = sum(int(entry.get("completion_tokens") or 0) for entry in requests) / max(ended, 1)
    # Per line: the POST and the client's status polls are the batch's, spread over its lines.
    extra = {"apigw_requests": (1.0 + polls) / max(ended, 1)}
    lines = price(measured["units"], measured["lambdas"], extra)
    baton = sum(lines.values())
    infer = measured["lambdas"].get("InferFunction", {})
    # Distributed Map: each line's infer task is an invocation of its own, waiting for its call
    # alone. The measured infer time is per line (a batch of 10 shares invocations locally).
    task_ms = infer.get("billed_ms", 0.0)
    infer_memory = int(infer.get("memory_mb", memory.get("InferFunction", 512)))
    sfn = (
        lambda_cost(1, math.ceil(task_ms), infer_memory)
        + PRICES.sfn_express_per_request
        + express_duration_cost(task_ms)
    )
    model_full = _model_cost(prompt * 1e6, completion * 1e6)  # per million lines
    model_batch = model_full * OPENAI_BATCH_DISCOUNT
    requests_per_line = sum(measured["calls"].values())
    unfinished = (
        ""
        if finished
        else f" NOT FINISHED: the wait ({wait_s:.0f} s) ran out with {ended} of {lines_total} lines ended;"
        " the per-line figures below divide every line's fan-out by the ended lines only (too high)"
    )
    result.add(
        f"batch of {lines_total} lines: status, time, lines/s",
        f"{batch['status']} {counts}, {seconds:.0f} s (accepted in {accepted_s:.1f} s), "
        f"{ended / seconds:.2f} lines/s{unfinished}",
    )
    if not finished:
        result.notes.append(
            f"batch of {lines_total} lines not finished within {wait_s:.0f} s (BENCH_BATCH_WAIT_S)"
        )
    result.add(
        "batch: AWS requests per line (by function)",
        f"{requests_per_line:.2f} ("
        + ", ".join(
            f"{name} {value:.2f}" for name, value in sorted(by_function.items(), key=lambda kv: -kv[1])
        )
        + f"; the API's include {polls} status polls)",
    )
    result.add(
        "batch: AWS $ per million lines, Baton / Step Functions Distributed Map (Express) / OpenAI Batch",
        f"${per_million(baton):.2f} / ${per_million(sfn):.2f} / $0",
    )
    result.add(
        f"batch: model $ per million lines at {LISTED_MODEL}, Baton (list) / OpenAI Batch (50 %)",
        f"${model_full:.2f} / ${model_batch:.2f} ({prompt:.0f} + {completion:.0f} tokens per line)",
    )
    return {
        "lines": lines_total,
        "status": batch["status"],
        "counts": counts,
        "seconds": seconds,
        "finished": finished,
        "wait_s": wait_s,
        "status_polls": polls,
        "lines_per_s": ended / seconds if seconds else None,
        "aws_requests_per_line": requests_per_line,
        "aws_requests_per_line_by_function": by_function,
        "aws_calls_per_line": measured["calls"],
        "aws_usd_per_line": lines,
        "baton_per_million": per_million(baton),
        "sfn_distributed_map_per_million": per_million(sfn),
        "model_per_million_full": model_full,
        "model_per_million_openai_batch": model_batch,
        "tokens_per_line": [prompt, completion],
    }


def _requests_by_function(metrics: dict[str, Any], lines: int) -> dict[str, float]:
    """AWS requests per line by the function that made them (counted as job_units counts them)."""
    found: dict[str, float] = {}
    for row in metrics["aws"]:
        role = str(row["role"])
        if role.startswith(EXCLUDED_ROLES) or row["operation"] == "ReceiveMessage:empty":
            continue
        found[role] = found.get(role, 0.0) + row["calls"] / lines
    return found


def run(*, quick: bool = False, stack: StackProcess | None = None) -> Result:
    """A stack of its own (the default simulator: no latency, the 32,768-token context)."""
    del stack
    lines_total = 200 if quick else int(os.environ.get("BENCH_BATCH_LINES", "1000"))
    result = Result("documents_batches", "9. A 1 MB document (map-reduce) and a batch of many lines")
    with StackProcess(StackOptions(parameters={"ProviderRequestsPerMinute": "60000"})) as live:
        document = _document(live, result)
        batch = _batch(live, result, lines_total)
    result.data = {"prices_as_of": PRICES_AS_OF, "document": document, "batch": batch}
    result.notes.append(f"prices: us-east-1 list prices as of {PRICES_AS_OF}; {LISTED_MODEL} list price")
    result.notes.append(
        "local stack against moto and the simulator (no model latency): lines/s is Baton's own "
        "overhead on this machine, not a provider's rate; Distributed Map priced from the measured "
        "infer time per line"
    )
    return result


def main() -> int:
    return scenario_main(run, __doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())
