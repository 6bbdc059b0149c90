"""7. Local runtime throughput: jobs/s through the whole local stack with a zero-latency model,
and where the time goes.

Clients keep a bounded number of jobs in flight (moto slows down with deep queues, facts.md), so
this measures the local stack's steady state, not AWS. CPU seconds are read per process (the
stack: API emulation, pollers, the model simulator and every function process; moto; the
benchmark's own clients); py-spy samples the stack and moto for the whole run (bench/profile.py).
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.profile import Profile, Recording
from bench.report import Result, percentile, scenario_main
from bench.stack import StackOptions, StackProcess, cpu_seconds, parallel, use_stack

BODY = {"input": {"prompt": "Summarize: throughput test. The stack passes jobs along queues."}}
CLIENTS = 4


def run(*, quick: bool = False, stack: StackProcess | None = None) -> Result:
    duration_s = 8.0 if quick else 20.0
    max_in_flight = 16
    result = Result("throughput", "7. Local runtime throughput (model latency 0)")
    with use_stack(stack, StackOptions()) as live:
        with live.client() as client:  # warm-up: cold starts, authorizer cache
            warm = [live.submit(client, BODY) for _ in range(8)]
        live.wait_terminal([s.job_id for s in warm if s.job_id], timeout_s=60)
        live.reset()

        slots = threading.Semaphore(max_in_flight)
        in_flight: dict[str, float] = {}
        finished: dict[str, dict[str, Any]] = {}
        lock = threading.Lock()
        stop = threading.Event()

        def submitter(index: int) -> None:
            with live.client() as client:
                while not stop.is_set():
                    if not slots.acquire(timeout=0.2):
                        continue
                    submitted = live.submit(client, BODY)
                    if submitted.job_id is None:
                        slots.release()
                        continue
                    with lock:
                        in_flight[submitted.job_id] = time.monotonic()

        def watcher() -> None:
            while not stop.is_set() or in_flight:
                with lock:
                    ids = list(in_flight)
                if ids:
                    for job_id, job in live.jobs(ids).items():
                        if job is not None and job["status"] in {"completed", "failed"}:
                            with lock:
                                in_flight.pop(job_id, None)
                                finished[job_id] = {**job, "seen": time.monotonic()}
                            slots.release()
                if stop.is_set() and time.monotonic() > stop_at + 30:
                    return
                time.sleep(0.1)

        workdir = Path(tempfile.mkdtemp(prefix="baton-bench-profile-"))
        cpu_before = {
            "stack": cpu_seconds(live.pid, children_except=live.moto_pid),
            "moto": cpu_seconds(live.moto_pid),
            "bench": time.process_time(),
        }
        recordings = {
            "stack": Recording(live.pid, duration_s, workdir / "stack.txt"),
            "moto": Recording(live.moto_pid or 0, duration_s, workdir / "moto.txt"),
        }
        started = time.monotonic()
        stop_at = started + duration_s
        watch = threading.Thread(target=watcher, daemon=True)
        watch.start()
        with parallel(CLIENTS, submitter):
            time.sleep(duration_s)
            stop.set()
        window_end = time.monotonic()
        with lock:
            done_in_window = [job for job in finished.values() if job["seen"] <= window_end]
        cpu = {
            "stack": cpu_seconds(live.pid, children_except=live.moto_pid) - cpu_before["stack"],
            "moto": cpu_seconds(live.moto_pid) - cpu_before["moto"],
            "bench": time.process_time() - cpu_before["bench"],
        }
        watch.join(timeout=60)
        profiles = {name: recording.finish() for name, recording in recordings.items()}
        metrics = live.metrics()
    elapsed = window_end - started
    completed = len(done_in_window)
    jobs_per_s = completed / elapsed
    totals = [float(job["timings"].get("total_ms") or 0) for job in done_in_window]
    result.add("jobs/s (completed, steady state, <=16 in flight)", f"{jobs_per_s:.1f}")
    result.add(
        "job time (accept -> completed) p50 / p95",
        f"{percentile(totals, 50):.0f} / {percentile(totals, 95):.0f} ms",
    )
    per_job = {name: 1000 * seconds / max(1, completed) for name, seconds in cpu.items()}
    result.add(
        "CPU per job: stack / moto / clients",
        " / ".join(f"{per_job[name]:.0f}" for name in ("stack", "moto", "bench")) + " ms",
    )
    result.add(
        "CPU busy over the run (2 cores = 200%)",
        " / ".join(f"{100 * cpu[name] / elapsed:.0f}%" for name in ("stack", "moto", "bench")),
    )
    calls_per_job = sum(
        row["calls"] for row in metrics["aws"] if not row["role"].startswith(("setup", "control", "other"))
    ) / max(1, completed)
    result.add("AWS calls per job (handlers + pollers)", f"{calls_per_job:.1f}")
    empty_polls = sum(row["calls"] for row in metrics["aws"] if row["operation"] == "ReceiveMessage:empty")
    result.add("empty SQS long polls by the local pollers", f"{empty_polls / elapsed:.1f}/s")
    for name, profile in profiles.items():
        if profile.error:
            result.add(f"profile {name}", profile.error)
            continue
        top = ", ".join(f"{package} {share:.0f}%" for package, share in profile.top(profile.by_package, 5))
        result.add(f"{name}: where the GIL time goes (by package)", top)
        result.add(
            f"{name}: top functions (innermost non-stdlib caller)",
            "; ".join(f"{fn} {share:.0f}%" for fn, share in profile.top(profile.by_caller, 3)),
        )
    result.data = {
        "duration_s": elapsed,
        "completed": completed,
        "jobs_per_s": jobs_per_s,
        "cpu_seconds": cpu,
        "cpu_ms_per_job": per_job,
        "aws_calls_per_job": calls_per_job,
        "aws": metrics["aws"],
        "profiles": {name: _profile_data(profile) for name, profile in profiles.items()},
    }
    result.notes.append(
        "profiles: py-spy --gil samples (Python CPU time) of the stack process and the moto server, "
        "folded into the innermost non-stdlib package"
    )
    return result


def _profile_data(profile: Profile) -> dict[str, Any]:
    return {
        "samples": profile.samples,
        "error": profile.error,
        "by_package": profile.top(profile.by_package, 15),
        "by_caller": profile.top(profile.by_caller, 25),
        "by_function": profile.top(profile.by_function, 25),
    }


def main() -> int:
    return scenario_main(run, __doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())
