"""3. Async vs synchronous, same load: N clients each wanting one answer from a model whose latency
follows a 5-60 s distribution (log-uniform, seeded), scaled down in time for the run.

- Synchronous endpoint (simulated, real threads and sleeps): W workers behind a gateway with a
  29 s limit and a backlog of 2 x W; a request beyond the backlog is refused at once, a request not
  answered within 29 s times out (its worker still finishes it: wasted work).
- Baton (run for real on the local stack): the same arrivals POST jobs with a webhook; the model
  simulator sleeps each job's latency (`[sim:slow=MS]`); infer runs at the template's
  MaximumConcurrency (8 = W).

Times are reported in scenario seconds (real / SCALE): Baton's own fixed overhead (accept, hops,
notify: ~0.3-0.6 s real on this machine) is not scaled, so it counts x5 here - pessimistic for
Baton.
"""

from __future__ import annotations

import math
import queue
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

from bench.report import Result, percentile, scenario_main
from bench.stack import StackOptions, StackProcess, WebhookSink, use_stack

SCALE = 0.2  # 1 scenario second = 200 ms of real time
GATEWAY_LIMIT_S = 29.0
WORKERS = 8
LATENCY_RANGE_S = (5.0, 60.0)
ARRIVAL_WINDOW_S = 10.0  # every client arrives within the first 10 scenario seconds


@dataclass
class Outcome:
    arrival_s: float
    latency_s: float
    kind: str = "pending"  # ok | refused | timed_out | failed
    free_after_s: float = math.nan  # how long the client was held (scenario seconds)
    answer_after_s: float = math.nan  # when it had its answer (scenario seconds)
    done_at_s: float = math.nan  # absolute scenario time of the answer


def workload(clients: int, seed: int = 7) -> list[tuple[float, float]]:
    """(arrival, model latency) per client, in scenario seconds: log-uniform latencies."""
    rng = random.Random(seed)
    low, high = LATENCY_RANGE_S
    return sorted(
        (rng.uniform(0, ARRIVAL_WINDOW_S), math.exp(rng.uniform(math.log(low), math.log(high))))
        for _ in range(clients)
    )


def run_sync(load: list[tuple[float, float]]) -> list[Outcome]:
    backlog: queue.Queue[tuple[float, threading.Event]] = queue.Queue(maxsize=2 * WORKERS)
    outcomes = [Outcome(arrival, latency) for arrival, latency in load]
    start = time.monotonic()
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            try:
                latency, done = backlog.get(timeout=0.05)
            except queue.Empty:
                continue
            time.sleep(latency * SCALE)
            done.set()

    def client(outcome: Outcome) -> None:
        delay = outcome.arrival_s * SCALE - (time.monotonic() - start)
        if delay > 0:
            time.sleep(delay)
        asked = time.monotonic()
        done = threading.Event()
        try:
            backlog.put_nowait((outcome.latency_s, done))
        except queue.Full:
            outcome.kind, outcome.free_after_s = "refused", (time.monotonic() - asked) / SCALE
            return
        if done.wait(timeout=GATEWAY_LIMIT_S * SCALE):
            now = time.monotonic()
            outcome.kind = "ok"
            outcome.free_after_s = outcome.answer_after_s = (now - asked) / SCALE
            outcome.done_at_s = (now - start) / SCALE
        else:
            outcome.kind, outcome.free_after_s = "timed_out", GATEWAY_LIMIT_S

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(WORKERS)]
    clients = [threading.Thread(target=client, args=(outcome,), daemon=True) for outcome in outcomes]
    for thread in workers + clients:
        thread.start()
    for thread in clients:
        thread.join()
    stop.set()
    return outcomes


def run_baton(live: StackProcess, sink: WebhookSink, load: list[tuple[float, float]]) -> list[Outcome]:
    outcomes = [Outcome(arrival, latency) for arrival, latency in load]
    ids: dict[int, str] = {}
    start = time.monotonic()
    start_epoch_ms = time.time() * 1000

    def client(index: int) -> None:
        outcome = outcomes[index]
        delay = outcome.arrival_s * SCALE - (time.monotonic() - start)
        if delay > 0:
            time.sleep(delay)
        latency_ms = round(outcome.latency_s * SCALE * 1000)
        body = {
            "input": {"prompt": f"Answer the question. [sim:slow={latency_ms}]"},
            "webhook": {"url": sink.url},
        }
        with live.client() as http:
            submitted = live.submit(http, body)
        outcome.free_after_s = submitted.ms / 1000  # accepting does not depend on the model: unscaled
        if submitted.job_id is None:
            outcome.kind = "refused"
            return
        ids[index] = submitted.job_id
        arrived = sink.wait(submitted.job_id, timeout_s=120)
        if arrived is None:
            outcome.kind = "failed"
            return
        outcome.kind = "ok" if sink.types.get(submitted.job_id) == "job.completed" else "failed"
        outcome.answer_after_s = (arrived - submitted.sent_epoch_ms) / 1000 / SCALE
        outcome.done_at_s = (arrived - start_epoch_ms) / 1000 / SCALE

    threads = [threading.Thread(target=client, args=(index,), daemon=True) for index in range(len(outcomes))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def warm_up(live: StackProcess, sink: WebhookSink) -> None:
    """Concurrent jobs first, so that the API and infer functions have their execution
    environments (the local runtime imports a fresh copy per concurrent invocation: a cold start)."""
    body = {"input": {"prompt": "warm up [sim:slow=300]"}, "webhook": {"url": sink.url}}
    ids: list[str] = []

    def submit(index: int) -> None:
        with live.client() as http:
            submitted = live.submit(http, body)
        if submitted.job_id:
            ids.append(submitted.job_id)

    threads = [threading.Thread(target=submit, args=(index,)) for index in range(2 * WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sink.wait_all(ids, timeout_s=120)


def summarize(outcomes: list[Outcome]) -> dict[str, Any]:
    ok = [outcome for outcome in outcomes if outcome.kind == "ok"]
    first = min(outcome.arrival_s for outcome in outcomes)
    # The run lasts until every client is done: answered, refused or given up at the gateway.
    last = max(
        outcome.done_at_s if outcome.kind == "ok" else outcome.arrival_s + outcome.free_after_s
        for outcome in outcomes
    )
    minutes = max(1e-9, (last - first) / 60)
    free = [outcome.free_after_s for outcome in outcomes]
    return {
        "clients": len(outcomes),
        "ok": len(ok),
        "refused": sum(1 for outcome in outcomes if outcome.kind == "refused"),
        "timed_out": sum(1 for outcome in outcomes if outcome.kind == "timed_out"),
        "failed": sum(1 for outcome in outcomes if outcome.kind == "failed"),
        "free_after_s": {"p50": percentile(free, 50), "p95": percentile(free, 95), "max": max(free)},
        "answer_after_s_p50": percentile([outcome.answer_after_s for outcome in ok], 50),
        "jobs_per_min": len(ok) / minutes,
        "makespan_s": last - first,
        # Model time spent on requests whose client had already given up (the worker still ran them).
        "wasted_model_s": sum(outcome.latency_s for outcome in outcomes if outcome.kind == "timed_out"),
    }


def run(*, quick: bool = False, stack: StackProcess | None = None) -> Result:
    clients = 24 if quick else 48
    load = workload(clients)
    result = Result(
        "async_vs_sync", f"3. Async vs sync ({clients} clients, W={WORKERS}, 1 s = {SCALE * 1000:.0f} ms)"
    )
    with use_stack(stack, StackOptions()) as live, WebhookSink() as sink:
        warm_up(live, sink)
        sync_outcomes: list[Outcome] = []
        thread = threading.Thread(target=lambda: sync_outcomes.extend(run_sync(load)), daemon=True)
        thread.start()  # both sides run at once: the synchronous one only sleeps
        baton = summarize(run_baton(live, sink, load))
        thread.join()
    sync = summarize(sync_outcomes)
    over_limit = sum(1 for _, latency in load if latency > GATEWAY_LIMIT_S)
    result.add("model latency > 29 s (no sync answer possible)", f"{over_limit} of {clients}")
    for name, side in (("sync", sync), ("Baton", baton)):
        free = side["free_after_s"]
        unit = "s" if name == "sync" else "s (real: the 202)"
        result.add(
            f"{name}: client free again after p50 / p95 / max",
            f"{free['p50']:.2f} / {free['p95']:.2f} / {free['max']:.2f} {unit}",
        )
        if not math.isnan(side["answer_after_s_p50"]):
            result.add(f"{name}: answer after p50 (those answered)", f"{side['answer_after_s_p50']:.1f} s")
        result.add(
            f"{name}: answered / refused / timed out at 29 s / failed",
            f"{side['ok']} / {side['refused']} / {side['timed_out']} / {side['failed']}",
        )
        result.add(
            f"{name}: answers per minute until every client was done",
            f"{side['jobs_per_min']:.1f} (over {side['makespan_s']:.0f} s)",
        )
        if side["wasted_model_s"]:
            result.add(
                f"{name}: model time spent for clients gone at 29 s", f"{side['wasted_model_s']:.0f} s"
            )
    result.data = {"scale": SCALE, "workers": WORKERS, "load": load, "sync": sync, "baton": baton}
    result.notes.append(
        "sync side simulated (threads + sleeps, backlog 2 x W); Baton side run for real on the local stack "
        "at scaled latency; times in scenario seconds"
    )
    return result


def main() -> int:
    return scenario_main(run, __doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())
