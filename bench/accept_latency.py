"""1. Accept latency: POST /v1/jobs -> 202 through the local runtime at 1, 8 and 32 concurrent clients.

Beside what the clients see, the API function's own time measured where it runs (the handler,
in-process) and, inside it, the time spent in AWS calls (to moto over HTTP locally). So:
client - handler = the local HTTP front (API Gateway emulation, authorizer cache, thread hops);
handler - AWS calls = Baton's own code (parsing, validation, Powertools, JSON, logging).
The rest of the pipeline runs as usual (model latency 0) so queues stay shallow.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from bench.report import Result, fmt_pcts, percentile, scenario_main
from bench.stack import StackOptions, StackProcess, Submitted, parallel, use_stack

LEVELS = (1, 8, 32)
BODY = {"input": {"prompt": "Summarize: the quarterly numbers went up. Costs went down."}}


def _requests_for(clients: int, quick: bool) -> int:
    per_level = {1: 120, 8: 240, 32: 320} if not quick else {1: 20, 8: 40, 32: 64}
    return per_level.get(clients, 10 * clients)


def run_level(stack: StackProcess, clients: int, total: int) -> dict[str, Any]:
    """One concurrency level; a reset connection counts as an answer-less request (status 0)."""
    # Warm-up at this concurrency: the runtime gives each concurrent invocation an execution
    # environment of its own, and the first use of each is a cold start (not what is measured).
    with parallel(clients, lambda index: _burst(stack, 2)):
        pass
    stack.reset()
    environments = stack.metrics()["environments"].get("ApiFunction", 1)
    results: list[Submitted] = []
    lock = threading.Lock()
    per_client = [total // clients + (1 if index < total % clients else 0) for index in range(clients)]

    def client_loop(index: int) -> None:
        with stack.client() as client:
            for _ in range(per_client[index]):
                submitted = stack.submit(client, BODY)
                with lock:
                    results.append(submitted)

    started = time.perf_counter()
    with parallel(clients, client_loop):
        pass
    elapsed = time.perf_counter() - started
    metrics = stack.metrics()
    api = metrics["invocations"]["ApiFunction"]
    handler_ms: list[float] = api["ms"]
    aws_ms: list[float] = api["aws_ms"]
    own_ms = [total_ms - aws for total_ms, aws in zip(handler_ms, aws_ms, strict=True)]
    client_ms = [submitted.ms for submitted in results if submitted.status]
    accepted = [submitted for submitted in results if submitted.status == 202]
    calls = {
        f"{row['service']}:{row['operation']}": row["calls"] / max(1, len(accepted))
        for row in metrics["aws"]
        if row["role"] == "ApiFunction"
    }
    # Let the pipeline finish these jobs before the next level: keeps moto's queues shallow.
    stack.wait_terminal([s.job_id for s in accepted if s.job_id], timeout_s=120)
    return {
        "clients": clients,
        "requests": len(results),
        "accepted_202": len(accepted),
        "connection_errors": sum(1 for submitted in results if submitted.status == 0),
        "throughput_rps": round(len(results) / elapsed, 1),
        "client_ms": client_ms,
        "handler_ms": handler_ms,
        "handler_aws_ms": aws_ms,
        "handler_own_ms": own_ms,
        "api_environments": environments,
        "authorizer_invocations": len(metrics["invocations"]["AuthorizerFunction"]["ms"]),
        "aws_calls_per_accept": calls,
    }


def _burst(stack: StackProcess, count: int) -> None:
    with stack.client() as client:
        for _ in range(count):
            stack.submit(client, BODY)


def run(*, quick: bool = False, stack: StackProcess | None = None) -> Result:
    result = Result("accept_latency", "1. Accept latency (POST -> 202)")
    with use_stack(stack, StackOptions()) as live:
        # Warm-up: cold starts, the authorizer's cache (300 s TTL), connection pools.
        with live.client() as client:
            for _ in range(10):
                live.submit(client, BODY)
        levels = [run_level(live, clients, _requests_for(clients, quick)) for clients in LEVELS]
    for level in levels:
        n = level["clients"]
        gap = [
            max(0.0, percentile(level["client_ms"], q) - percentile(level["handler_ms"], q))
            for q in (50, 95, 99)
        ]
        result.add(f"{n:>2} clients: client p50/p95/p99", fmt_pcts(level["client_ms"]))
        result.add(f"{n:>2} clients: API handler in-process p50/p95/p99", fmt_pcts(level["handler_ms"]))
        result.add(
            f"{n:>2} clients: of which AWS calls (moto) / Baton code, p50",
            f"{percentile(level['handler_aws_ms'], 50):.1f} / "
            f"{percentile(level['handler_own_ms'], 50):.1f} ms",
        )
        result.add(
            f"{n:>2} clients: local HTTP front (client - handler) p50/p95/p99",
            " / ".join(f"{value:.1f}" for value in gap) + " ms",
        )
        result.add(
            f"{n:>2} clients: accepted/sent (connections reset), throughput",
            f"{level['accepted_202']}/{level['requests']} ({level['connection_errors']}), "
            f"{level['throughput_rps']} req/s",
        )
    first = levels[0]["aws_calls_per_accept"]
    result.add(
        "AWS calls per accept", ", ".join(f"{name} {count:.0f}" for name, count in sorted(first.items()))
    )
    result.data = {"levels": levels}
    result.notes.append(
        "handler = the API function's lambda_handler timed on the thread that runs it; AWS calls go to "
        "moto over loopback HTTP (on AWS each is a ~5-10 ms network round trip instead)"
    )
    return result


def main() -> int:
    return scenario_main(run, __doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())
