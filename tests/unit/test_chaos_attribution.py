"""Duplicate paid creates in background-mode chaos (tests/chaos/attribution.py): reported as
residual create -> id-write window hits only with evidence from the infer function's log (the
worker got the id and timed out, or died with the SIGKILL, before storing it); any other duplicate
still fails the run. The log lines below are recorded from a background chaos run (shortened:
Powertools' fixed keys dropped) and the local runtime's timeout line."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.chaos.attribution import (
    CREATED,
    STORED,
    Cause,
    Duplicate,
    InferLog,
    attribute,
    read_infer_log,
    store_latencies,
)
from tests.chaos.harness import (
    AGENT_PROMPT,
    ChaosConfig,
    JobKind,
    JobSpec,
    Observations,
    Submission,
    analyse,
)

STEP = "job_e7169ee9e16eb041372d1c790485ee62:1:0"
OTHER = "job_d1f4fd369ea8793e0973924807cc96da:1:0"
WORKER = "5397e292-6202-4914-8df2-35271e3520da"  # timed out between its create and its id write
RETRY = "d89bb911-ec3d-4c8d-ac7a-846996de1c16"
T0 = datetime(2026, 12, 1, 21, 8, 47, 990000, tzinfo=UTC).timestamp()  # the first create's answer
NO_KILL = (0.0, -1.0)


def powertools(at: float, message: str, request_id: str, **extra: Any) -> str:
    stamp = datetime.fromtimestamp(at, tz=UTC).strftime("%Y-%m-%d %H:%M:%S,%f")[:-3] + "+0000"
    return json.dumps(
        {
            "level": "INFO",
            "location": "create_and_store:138",
            "message": message,
            "timestamp": stamp,
            "service": "baton-infer",
            "cold_start": False,
            "function_name": "InferFunction",
            "function_request_id": request_id,
            **extra,
        }
    )


def runtime_timeout(at: float, request_id: str) -> str:
    stamp = datetime.fromtimestamp(at, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return f"{stamp} {request_id} Task timed out after 20.00 seconds"


def create(at: float, response_id: str, step: str = STEP, status: int = 200) -> dict[str, Any]:
    """The simulator's log entry of a create (GET /_sim/requests)."""
    return {
        "ts": at,
        "path": "/v1/responses",
        "model": "baton-local",
        "status": status,
        "fault": None,
        "job_id": step.split(":")[0],
        "step_key": step,
        "prompt_tokens": 43,
        "completion_tokens": 45,
        "response_id": response_id,
    }


def worker_got_and_stored(at: float, response_id: str, request_id: str, step: str = STEP) -> list[str]:
    return [
        powertools(
            at + 0.1, CREATED, request_id, job_id=step.split(":")[0], step_key=step, response_id=response_id
        ),
        powertools(
            at + 0.9,
            STORED,
            request_id,
            job_id=step.split(":")[0],
            step_key=step,
            response_id=response_id,
            create_ms=95,
            store_ms=780,
        ),
    ]


def timed_out_before_the_write() -> list[str]:
    """The run's recorded case: the create answered 16 s into a 20 s invocation, the id's write
    to a contended moto did not land before the timeout; a later invocation paid again."""
    return [
        powertools(
            T0 + 0.05, CREATED, WORKER, job_id=STEP.split(":")[0], step_key=STEP, response_id="resp_first"
        ),
        runtime_timeout(T0 + 4.2, WORKER),
        *worker_got_and_stored(T0 + 41.0, "resp_second", RETRY),
    ]


def attributed(
    paid: dict[str, list[dict[str, Any]]],
    lines: list[str],
    *,
    kill_at: float | None = None,
    window: tuple[float, float] = NO_KILL,
) -> list[Duplicate]:
    """Background mode's attribution of `paid` (the simulator's entries) with these log lines."""
    return attribute(
        paid,
        background=True,
        log=read_infer_log(lines),
        kill_window=window,
        kill_at=kill_at,
        invocation_limit_s=21,
    )


def test_the_log_is_read_for_creates_stored_ids_timeouts_and_deferred_creates() -> None:
    lines = [
        *timed_out_before_the_write(),
        "START RequestId: ignored",
        powertools(
            T0 + 50,
            "model call deferred",
            RETRY,
            reason="not enough time left in this invocation to create a response and store its id",
            delay_s=1,
        ),
        powertools(T0 + 51, "model call deferred", RETRY, reason="the provider answered 429", delay_s=1),
        "{not json but mentions Task timed out after",
    ]
    log = read_infer_log(lines)
    assert set(log.created) == {"resp_first", "resp_second"}
    assert log.created["resp_first"].request_id == WORKER
    assert abs(log.created["resp_first"].at - (T0 + 0.05)) < 0.002
    assert set(log.stored) == {"resp_second"}
    assert abs(log.timed_out[WORKER] - (T0 + 4.2)) < 0.002
    assert log.deferred_for_time == 1
    assert store_latencies(log) == ([95.0], [780.0])


def test_a_create_whose_worker_timed_out_before_storing_its_id_is_a_window_hit() -> None:
    paid = {STEP: [create(T0 + 41.0, "resp_second"), create(T0, "resp_first")]}
    [duplicate] = attributed(paid, timed_out_before_the_write())
    assert duplicate.cause is Cause.TIMED_OUT
    assert duplicate.response_id == "resp_first"
    assert WORKER in duplicate.evidence


def test_a_duplicate_without_a_timeout_or_a_kill_is_unexplained() -> None:
    lines = [line for line in timed_out_before_the_write() if "Task timed out" not in line]
    paid = {STEP: [create(T0, "resp_first"), create(T0 + 41.0, "resp_second")]}
    [duplicate] = attributed(paid, lines)
    assert duplicate.cause is Cause.UNEXPLAINED


def test_an_invocation_that_timed_out_before_its_create_answered_is_no_evidence() -> None:
    lines = [runtime_timeout(T0 - 1.0, WORKER), *timed_out_before_the_write()[:1]]
    lines += worker_got_and_stored(T0 + 41.0, "resp_second", RETRY)
    paid = {STEP: [create(T0, "resp_first"), create(T0 + 41.0, "resp_second")]}
    [duplicate] = attributed(paid, lines)
    assert duplicate.cause is Cause.UNEXPLAINED


def test_a_stored_id_followed_by_another_paid_create_is_unexplained_even_inside_the_kill_window() -> None:
    lines = [
        *worker_got_and_stored(T0, "resp_first", WORKER),
        *worker_got_and_stored(T0 + 3, "resp_second", RETRY),
    ]
    paid = {STEP: [create(T0, "resp_first"), create(T0 + 3, "resp_second")]}
    duplicates = attributed(paid, lines, kill_at=T0 + 1, window=(T0 - 5, T0 + 5))
    assert [d.cause for d in duplicates] == [Cause.UNEXPLAINED]
    assert "stored" in duplicates[0].evidence


def test_the_unused_create_is_the_one_never_stored_whatever_the_order() -> None:
    """A later create that was never stored is the wasted one, not the earlier stored one."""
    lines = [
        *worker_got_and_stored(T0, "resp_first", WORKER),
        powertools(
            T0 + 2, CREATED, RETRY, job_id=STEP.split(":")[0], step_key=STEP, response_id="resp_second"
        ),
        runtime_timeout(T0 + 5, RETRY),
    ]
    paid = {STEP: [create(T0, "resp_first"), create(T0 + 2, "resp_second")]}
    [duplicate] = attributed(paid, lines)
    assert duplicate.response_id == "resp_second" and duplicate.cause is Cause.TIMED_OUT


def test_a_create_answered_in_the_kill_window_and_never_stored_is_the_kill() -> None:
    lines = worker_got_and_stored(T0 + 30, "resp_second", RETRY)
    paid = {STEP: [create(T0, "resp_first"), create(T0 + 30, "resp_second")]}
    [duplicate] = attributed(paid, lines, kill_at=T0 + 1, window=(T0 - 5, T0 + 4))
    assert duplicate.cause is Cause.KILLED


def test_a_worker_that_got_its_id_before_the_kill_window_and_died_with_the_runtime_is_the_kill() -> None:
    lines = [
        powertools(T0, CREATED, WORKER, job_id=STEP.split(":")[0], step_key=STEP, response_id="resp_first"),
        *worker_got_and_stored(T0 + 40, "resp_second", RETRY),
    ]
    kill_at = T0 + 8  # the id's write was still waiting on moto 8 s later
    window = (kill_at - 5, kill_at + 4)
    paid = {STEP: [create(T0, "resp_first"), create(T0 + 40, "resp_second")]}
    [duplicate] = attributed(paid, lines, kill_at=kill_at, window=window)
    assert duplicate.cause is Cause.KILLED
    # The same worker still logging after the kill was not killed by it: no evidence.
    alive = [*lines, powertools(kill_at + 2, "step failed; SQS will redeliver", WORKER)]
    [duplicate] = attributed(paid, alive, kill_at=kill_at, window=window)
    assert duplicate.cause is Cause.UNEXPLAINED


def test_a_create_that_timed_out_at_the_client_explains_one_duplicate_of_its_step() -> None:
    warning = powertools(
        T0 + 0.5,
        "background create timed out: the provider may hold a response Baton cannot find",
        WORKER,
        job_id=STEP.split(":")[0],
        step_key=STEP,
    )
    lines = [
        warning,
        *worker_got_and_stored(T0 + 20, "resp_second", RETRY),
        *worker_got_and_stored(T0 + 20, "resp_b", RETRY, step=OTHER),
    ]
    paid = {
        STEP: [create(T0, "resp_first"), create(T0 + 20, "resp_second")],
        OTHER: [create(T0, "resp_a", step=OTHER), create(T0 + 20, "resp_b", step=OTHER)],
    }
    causes = {d.step_key: d.cause for d in attributed(paid, lines)}
    assert causes == {STEP: Cause.CREATE_LOST, OTHER: Cause.UNEXPLAINED}


def test_sync_mode_accepts_only_the_kill_window() -> None:
    chat = {
        STEP: [
            {"ts": T0, "path": "/v1/chat/completions", "status": 200},
            {"ts": T0 + 30, "path": "/v1/chat/completions", "status": 200},
        ]
    }
    inside = attribute(
        chat, background=False, log=None, kill_window=(T0 - 1, T0 + 1), kill_at=T0, invocation_limit_s=21
    )
    outside = attribute(
        chat, background=False, log=None, kill_window=NO_KILL, kill_at=None, invocation_limit_s=21
    )
    assert [d.cause for d in inside] == [Cause.KILLED]
    assert [d.cause for d in outside] == [Cause.UNEXPLAINED]


# -- the run's verdict (harness.analyse) ------------------------------------------------------------


def one_completed_job(log: InferLog | None) -> tuple[ChaosConfig, Observations]:
    spec = JobSpec(index=0, kind=JobKind.AGENT, prompt=AGENT_PROMPT, idempotency_key="chaos-test-0")
    step = f"{spec.job_id}:1:0"
    job = {
        "id": spec.job_id,
        "status": "completed",
        "metadata": {"chaos_index": "0"},
        "result": {"text": "12 * 7 = 84"},
        "depth": 1,
        "created_at": "2026-12-01T21:08:40Z",
        "updated_at": "2026-12-01T21:09:33Z",
    }
    obs = Observations(specs=[spec])
    obs.submissions[spec.job_id] = Submission(job_id=spec.job_id, attempts=1, accepted_at=T0 - 10)
    obs.jobs_via_get[spec.job_id] = job
    obs.table_jobs[spec.job_id] = {"status": "completed"}
    obs.table_job_items = 1
    obs.kill_at = T0 - 60
    obs.started_at, obs.finished_at = T0 - 100, T0 + 100
    obs.sim_log = [
        create(T0, "resp_first", step=step),
        create(T0 + 41, "resp_second", step=step),
        create(T0 + 45, "resp_third", step=f"{spec.job_id}:1:1"),
    ]
    obs.infer_log = log
    return ChaosConfig(jobs=1, inference_mode="background", webhook_receivers=()), obs


def recorded(step: str, *, timed_out: bool) -> InferLog:
    job = step.split(":")[0]
    lines = [
        powertools(T0 + 0.05, CREATED, WORKER, job_id=job, step_key=step, response_id="resp_first"),
        *([runtime_timeout(T0 + 4.2, WORKER)] if timed_out else []),
        *worker_got_and_stored(T0 + 41, "resp_second", RETRY, step=step),
        *worker_got_and_stored(T0 + 45, "resp_third", RETRY, step=f"{job}:1:1"),
    ]
    return read_infer_log(lines)


def test_the_report_counts_window_hits_apart_and_passes_with_their_evidence() -> None:
    config, obs = one_completed_job(None)
    obs.infer_log = recorded(f"{obs.specs[0].job_id}:1:0", timed_out=True)
    report = analyse(config, obs)
    figures = dict(report.figures)
    assert (report.window_hits, report.paid_creates, report.duplicate_paid_unexplained) == (1, 3, 0)
    assert figures["residual create -> id-write window hits"].startswith("1 of 3 paid creates (1 timed out")
    assert not [problem for problem in report.problems if "duplicate paid" in problem], report.problems


def test_the_report_fails_the_run_on_a_duplicate_without_evidence() -> None:
    config, obs = one_completed_job(None)
    obs.infer_log = recorded(f"{obs.specs[0].job_id}:1:0", timed_out=False)
    report = analyse(config, obs)
    assert (report.window_hits, report.duplicate_paid_unexplained) == (0, 1)
    assert [problem for problem in report.problems if "duplicate paid" in problem]


# -- background chaos: the simulator's webhooks race the polls -----------------------------------


def test_the_background_chaos_simulator_signs_webhooks_to_the_stacks_provider_endpoint(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tests.chaos.harness
    from tests.chaos.harness import SIM_WEBHOOK_SECRET, ChaosStack

    ports = iter(range(41000, 41100))
    monkeypatch.setattr(tests.chaos.harness, "free_port", lambda: next(ports))  # no sockets here

    stack = ChaosStack(ChaosConfig(inference_mode="background"), tmp_path)
    argv = list(stack.simulator.argv)
    assert argv[argv.index("--webhook-url") + 1] == f"{stack.api_url}/v1/provider-webhooks/openai"
    secret = stack.simulator.env[SIM_WEBHOOK_SECRET]
    assert secret == stack.provider_webhook_secret and secret.startswith("whsec_")

    polls_only = ChaosStack(ChaosConfig(inference_mode="background", provider_webhooks=False), tmp_path)
    assert "--webhook-url" not in polls_only.simulator.argv
    assert SIM_WEBHOOK_SECRET not in polls_only.simulator.env
    assert ChaosStack(ChaosConfig(), tmp_path).provider_webhook_secret is None  # sync mode


def test_what_resumed_each_response_is_counted_from_the_log() -> None:
    lines = [
        powertools(T0, "background response finished", WORKER, job_id="job_a", by="poll"),
        powertools(T0, "background response finished", RETRY, job_id="job_b", by="webhook:evt_1"),
        powertools(T0, "background response finished", RETRY, job_id="job_c", by="webhook:evt_2"),
    ]
    assert read_infer_log(lines).finished_by == {"poll": 1, "webhook": 2}


def test_a_create_whose_worker_timed_out_waiting_for_its_answer_is_a_window_hit() -> None:
    """Recorded: a paid create no worker logged (its answer never reached the worker), sent by an
    invocation that the function's timeout ended; another step's create without it stays
    unexplained."""
    job = STEP.split(":")[0]
    lines = [
        powertools(T0 - 3.0, "creating a background response", WORKER, job_id=job, step_key=STEP),
        runtime_timeout(T0 + 1.5, WORKER),
        *worker_got_and_stored(T0 + 30, "resp_second", RETRY),
        powertools(T0 - 3.0, "creating a background response", RETRY, job_id="job_b", step_key=OTHER),
        *worker_got_and_stored(T0 + 30, "resp_b", RETRY, step=OTHER),
    ]
    paid = {
        STEP: [create(T0, "resp_first"), create(T0 + 30, "resp_second")],
        OTHER: [create(T0, "resp_a", step=OTHER), create(T0 + 30, "resp_b", step=OTHER)],
    }
    causes = {d.step_key: d.cause for d in attributed(paid, lines)}
    assert causes == {STEP: Cause.CREATE_LOST, OTHER: Cause.UNEXPLAINED}
