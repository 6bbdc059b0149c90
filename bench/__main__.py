"""`make bench` / `python -m bench [--quick] [--only a,b]`: every scenario, one table, JSON history.

Scenarios 1, 2, 3 and 7 share one local stack (each resets what it measures); 4 (cost), 6 (rate
limit), 8 (background cost: a sync and a background stack) and 9 (a document and a batch) start
their own, configured for them; 5 (cold start) needs none. Results go to bench/results/<timestamp>.json and
bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import time
import traceback
from collections.abc import Callable
from typing import Any

from bench import (
    accept_latency,
    async_vs_sync,
    background_cost,
    cold_start,
    cost,
    documents_batches,
    pipeline_overhead,
    rate_limit_goodput,
    throughput,
)
from bench.report import Result, machine, print_results, timed, write_json
from bench.stack import StackOptions, StackProcess

Runner = Callable[..., Result]
SHARED: dict[str, Runner] = {
    "accept_latency": accept_latency.run,
    "pipeline_overhead": pipeline_overhead.run,
    "async_vs_sync": async_vs_sync.run,
    "throughput": throughput.run,
}
OWN: dict[str, Runner] = {
    "cold_start": cold_start.run,
    "cost": cost.run,
    "rate_limit_goodput": rate_limit_goodput.run,
    "background_cost": background_cost.run,
    "documents_batches": documents_batches.run,
}
ORDER = [
    "accept_latency",
    "pipeline_overhead",
    "async_vs_sync",
    "cost",
    "cold_start",
    "rate_limit_goodput",
    "throughput",
    "background_cost",
    "documents_batches",
]


def _safe(name: str, runner: Runner, **kwargs: Any) -> Result:
    try:
        return timed(runner, **kwargs)
    except Exception as error:
        failed = Result(name, f"{name} (failed)")
        failed.add("error", f"{type(error).__name__}: {str(error)[:200]}")
        failed.data = {"traceback": traceback.format_exc()}
        return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke test of the benchmarks)")
    parser.add_argument("--only", help=f"comma-separated scenarios: {', '.join(ORDER)}")
    args = parser.parse_args()
    chosen = [name for name in ORDER if not args.only or name in args.only.split(",")]
    started = time.monotonic()
    info = machine()
    print(
        f"Baton benchmarks on {info['cores']} cores, {info['cpu']}, Python {info['python']}",
        flush=True,
    )
    results: dict[str, Result] = {}
    shared = [name for name in chosen if name in SHARED]
    if shared:
        print("starting the shared local stack ...", flush=True)
        with StackProcess(StackOptions()) as stack:
            for name in shared:
                print(f"running {name} ...", flush=True)
                results[name] = _safe(name, SHARED[name], quick=args.quick, stack=stack)
    for name in chosen:
        if name in OWN:
            print(f"running {name} ...", flush=True)
            results[name] = _safe(name, OWN[name], quick=args.quick)
    ordered = [results[name] for name in chosen if name in results]
    print_results(ordered)
    path = write_json(ordered)
    print(f"\n{len(ordered)} scenarios in {time.monotonic() - started:.0f} s; results: {path}")
    return 0 if all("(failed)" not in result.title for result in ordered) else 1


if __name__ == "__main__":
    raise SystemExit(main())
