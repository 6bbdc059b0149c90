"""The chaos run's delivery accounting (tests/chaos/receivers.py): what counts as a terminal event
accounted for, and what fails the run."""

from __future__ import annotations

from typing import Any

from baton_dev.webhook_receiver import WebhookEvent
from tests.chaos.receivers import ReceiverKind, account_deliveries

SCHEDULE_LEN = 7


def attempt(at_s: float, status_code: int | None, error: str | None) -> dict[str, Any]:
    seconds = f"{at_s:06.3f}"
    return {
        "at": f"2026-12-01T10:00:{seconds}Z",
        "status_code": status_code,
        "error": error,
        "duration_ms": 5,
    }


def log(webhook_id: str, status: str, *attempts: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"webhook_id": webhook_id, "type": "job.completed", "status": status, "attempts": list(attempts)}]


GOOD = {
    "job_a": (
        ReceiverKind.FLAKY,
        log(
            "msg_job_a_completed",
            "delivered",
            attempt(0, 503, "http_error"),
            attempt(1, 500, "http_error"),
            attempt(3, 204, None),
        ),
    ),
    "job_b": (
        ReceiverKind.BUSY,
        log("msg_job_b_completed", "delivered", attempt(0, 429, "http_error"), attempt(4.2, 204, None)),
    ),
    "job_c": (ReceiverKind.GONE, log("msg_job_c_completed", "failed", attempt(0, 410, "gone"))),
    "job_d": (
        ReceiverKind.DOWN,
        log("msg_job_d_completed", "exhausted", *[attempt(i, None, "connection_error: E") for i in range(8)]),
    ),
}


def account(cases: dict[str, tuple[ReceiverKind, list[dict[str, Any]]]], accepted: set[str]) -> Any:
    return account_deliveries(
        events={f"msg_{job}_completed": (job, kind) for job, (kind, _) in cases.items()},
        logs={job: records for job, (_, records) in cases.items()},
        received=[WebhookEvent(webhook_id, True, {}) for webhook_id in accepted],
        schedule_len=SCHEDULE_LEN,
    )


def test_every_outcome_its_receiver_calls_for_is_accounted_for() -> None:
    result = account(GOOD, {"msg_job_a_completed", "msg_job_b_completed"})
    assert (result.unaccounted, result.problems) == (0, [])
    figures = dict(result.figures)
    assert figures["deliveries (terminal events with a webhook)"].startswith(
        "4: delivered 2, exhausted 1, stopped by 410 1, pending 0"
    )


def test_what_fails_the_run() -> None:
    bad = dict(GOOD)
    # Still pending; the 429's Retry-After not honoured; exhausted one attempt short; a 410 retried.
    bad["job_e"] = (ReceiverKind.OUTAGE, log("msg_job_e_completed", "pending", attempt(0, 503, "http_error")))
    bad["job_b"] = (
        ReceiverKind.BUSY,
        log("msg_job_b_completed", "delivered", attempt(0, 429, "http_error"), attempt(1, 204, None)),
    )
    bad["job_d"] = (
        ReceiverKind.DOWN,
        log("msg_job_d_completed", "exhausted", *[attempt(i, None, "connection_error: X") for i in range(7)]),
    )
    bad["job_c"] = (
        ReceiverKind.GONE,
        log("msg_job_c_completed", "failed", attempt(0, 410, "gone"), attempt(1, 410, "gone")),
    )
    bad["job_f"] = (ReceiverKind.SLOW, [])  # no delivery record at all
    # job_a logged delivered, but its receiver never accepted it.
    result = account(bad, {"msg_job_b_completed"})
    assert result.unaccounted == 6
    [summary] = result.problems
    assert summary.startswith("6 terminal event(s) unaccounted for")
    for job in ("job_a", "job_b", "job_c", "job_d", "job_e", "job_f"):
        assert f"msg_{job}_completed" in summary


def test_a_receiver_whose_fault_never_showed_fails_the_run() -> None:
    """A flaky receiver delivered at the first attempt: the fault was not injected at all."""
    cases = {"job_a": (ReceiverKind.FLAKY, log("msg_job_a_completed", "delivered", attempt(0, 204, None)))}
    result = account(cases, {"msg_job_a_completed"})
    assert result.unaccounted == 0
    assert result.problems == ["the flaky receiver's fault never showed in its attempts: {'204': 1}"]
