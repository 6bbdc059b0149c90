"""Review (approve / reject / expire), versions that fence stale commands, and re-runs, through the
API and stage handlers on the template's data plane."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

import baton.llm
from baton.clock import now_ms
from baton.errors import JobConflictError
from baton.llm import Completion
from baton.models import ReviewRequest, StageCommand, Step
from baton.records import Usage
from baton.settings import get_settings
from baton.store import JobStore
from baton.webhook_auth import unseal
from baton.wiring import job_failures, job_intake

if TYPE_CHECKING:
    from conftest import AwsStack, LoadedFunction

CALCULATE = Completion(
    text=None,
    finish_reason="tool_calls",
    tool_calls=[
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "calculator", "arguments": json.dumps({"expression": "6*7"})},
        }
    ],
    usage=Usage(prompt_tokens=10, completion_tokens=5, total_tokens=15),
)
ANSWER = Completion(
    text="It is 42.", finish_reason="stop", tool_calls=None, usage=Usage(prompt_tokens=20, total_tokens=25)
)


class ScriptedModel:
    """Answers from a script, one completion per call; records what it was asked."""

    def __init__(self, *answers: Completion) -> None:
        self.answers = list(answers)
        self.calls: list[dict[str, Any]] = []

    def __call__(self, *args: Any, **request: Any) -> Completion:
        self.calls.append(request)
        return self.answers.pop(0)


def body_of(response: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(response["body"])
    return body


def submit(aws: AwsStack, api: LoadedFunction, body: dict[str, Any]) -> str:
    response = api(aws.api_event("api-create-job.json", body=body, drop_headers=("Idempotency-Key",)))
    assert response["statusCode"] == 202, response["body"]
    return str(body_of(response)["id"])


def job_post(
    aws: AwsStack, api: LoadedFunction, job_id: str, action: str, body: Any, tenant: str = "acme"
) -> dict[str, Any]:
    """POST /v1/jobs/{id}/review or /rerun."""
    event = aws.api_event("api-create-job.json", body=body, drop_headers=("Idempotency-Key",), tenant=tenant)
    path = f"/v1/jobs/{job_id}/{action}"
    event["path"] = path
    event["resource"] = event["requestContext"]["resourcePath"] = f"/v1/jobs/{{job_id}}/{action}"
    event["requestContext"]["path"] = f"/{event['requestContext']['stage']}{path}"
    event["pathParameters"] = {"job_id": job_id}
    response: dict[str, Any] = api(event)
    return response


def get_job(aws: AwsStack, api: LoadedFunction, job_id: str) -> dict[str, Any]:
    return body_of(api(aws.api_event("api-get-job.json", job_id=job_id)))


TOOL_JOB = {"input": {"prompt": "What is 6*7?"}, "parameters": {"tools": ["calculator"], "max_depth": 1}}


@pytest.fixture
def stopped_for_review(
    aws: AwsStack, api: LoadedFunction, infer: LoadedFunction, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, dict[str, Any]]:
    """A job whose model asked for a tool at max_depth 1: the depth guard stopped it for review.
    Also returns the infer command that ran it (version 1), to replay later as a stale command."""
    monkeypatch.setattr(baton.llm, "complete", ScriptedModel(CALCULATE))
    job_id = submit(aws, api, TOOL_JOB)
    event = aws.take_event("InferQueue")
    assert infer(event) == {"batchItemFailures": []}
    job = get_job(aws, api, job_id)
    assert (job["status"], job["error"]["type"], job["version"]) == ("needs_review", "depth_limit", 1)
    return job_id, event


def test_approval_continues_from_the_tool_step_as_a_new_version(
    aws: AwsStack,
    api: LoadedFunction,
    infer: LoadedFunction,
    stopped_for_review: tuple[str, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job_id, old_infer_event = stopped_for_review
    approved = job_post(aws, api, job_id, "review", {"decision": "approve", "max_depth": 3})
    assert approved["statusCode"] == 200, approved["body"]
    job = body_of(approved)
    assert (job["status"], job["current_step"], job["version"]) == ("processing", "tool", 2)
    assert "error" not in job
    commands = [StageCommand.model_validate_json(m["Body"]) for m in aws.receive("ToolQueue")]
    assert commands == [StageCommand(job_id=job_id, tenant_id="acme", step=Step.TOOL, version=2, depth=0)]

    # The version-1 command comes back (a duplicate, or a retry racing the approval): discarded.
    model = ScriptedModel(ANSWER)
    monkeypatch.setattr(baton.llm, "complete", model)
    before = JobStore(aws.jobs_table).get("acme", job_id)
    stale = {"Records": [aws.sqs_record(old_infer_event["Records"][0]["body"])]}
    assert infer(stale) == {"batchItemFailures": []}
    assert model.calls == []
    assert JobStore(aws.jobs_table).get("acme", job_id) == before

    # The approved run: the stored tool call runs, then the model answers one hop deeper.
    tool = aws.load("ToolFunction")
    tool({"Records": [aws.sqs_record(commands[0].model_dump_json())]})
    next_command = StageCommand.model_validate_json(aws.receive("InferQueue")[0]["Body"])
    assert (next_command.version, next_command.depth) == (2, 1)
    assert infer({"Records": [aws.sqs_record(next_command.model_dump_json())]}) == {"batchItemFailures": []}
    done = get_job(aws, api, job_id)
    assert (done["status"], done["version"], done["depth"]) == ("completed", 2, 1)
    assert done["result"]["text"] == "It is 42."
    # The model saw the calculator's result: the conversation continued where it stopped.
    assert any(
        message.get("role") == "tool" and "42" in str(message.get("content"))
        for message in model.calls[0]["messages"]
    )


def test_two_approvals_racing_one_wins(aws: AwsStack, stopped_for_review: tuple[str, dict[str, Any]]) -> None:
    job_id, _ = stopped_for_review
    service = job_intake(get_settings())
    seen_by_both = service.store.get("acme", job_id)
    service._approve(seen_by_both, ReviewRequest(decision="approve"))
    with pytest.raises(JobConflictError):
        service._approve(seen_by_both, ReviewRequest(decision="approve"))
    assert len(aws.receive("ToolQueue")) == 1
    assert service.store.get("acme", job_id).version == 2


def test_approval_is_capped_by_the_review_limits(
    aws: AwsStack, stopped_for_review: tuple[str, dict[str, Any]]
) -> None:
    job_id, _ = stopped_for_review
    api = aws.load("ApiFunction", BATON_REVIEW_MAX_DEPTH="4")
    over_cap = job_post(aws, api, job_id, "review", {"decision": "approve", "max_depth": 5})
    assert over_cap["statusCode"] == 422
    assert body_of(over_cap)["error"]["field"] == "max_depth"
    past_fifteen = job_post(aws, api, job_id, "review", {"decision": "approve", "max_depth": 16})
    assert body_of(past_fifteen)["error"]["field"] == "max_depth"
    assert get_job(aws, api, job_id)["status"] == "needs_review"
    # Without numbers, approval raises the limits to the caps.
    assert job_post(aws, api, job_id, "review", {"decision": "approve"})["statusCode"] == 200
    assert JobStore(aws.jobs_table).get("acme", job_id).approved_max_depth == 4


def test_rejection_fails_the_job_and_other_states_conflict(
    aws: AwsStack, api: LoadedFunction, stopped_for_review: tuple[str, dict[str, Any]]
) -> None:
    job_id, _ = stopped_for_review
    aws.receive("NotifyQueue")  # the needs_review event
    rejected = job_post(aws, api, job_id, "review", {"decision": "reject", "reason": "loops forever"})
    assert rejected["statusCode"] == 200
    job = body_of(rejected)
    assert job["status"] == "failed"
    assert job["error"]["type"] == "review_rejected"
    assert "loops forever" in job["error"]["message"]
    events = [json.loads(m["Body"]) for m in aws.receive("NotifyQueue")]
    assert [event["detail-type"] for event in events] == ["Job Failed"]
    again = job_post(aws, api, job_id, "review", {"decision": "approve"})
    assert again["statusCode"] == 409
    pending = submit(aws, api, {"input": {"prompt": "hi"}})
    assert job_post(aws, api, pending, "review", {"decision": "reject"})["statusCode"] == 409
    assert job_post(aws, api, job_id, "review", {"decision": "reject", "max_depth": 3})["statusCode"] == 422
    assert job_post(aws, api, job_id, "review", {"decision": "approve"}, tenant="globex")["statusCode"] == 404


def test_a_job_nobody_reviews_expires(aws: AwsStack, stopped_for_review: tuple[str, dict[str, Any]]) -> None:
    job_id, _ = stopped_for_review
    service = job_failures(get_settings())
    window_ms = get_settings().review_window_ms
    assert service.fail_overdue(now_ms() + window_ms - 60_000, limit=100) == 0
    assert service.store.get("acme", job_id).status.value == "needs_review"
    assert service.fail_overdue(now_ms() + window_ms + 60_000, limit=100) == 1
    record = service.store.get("acme", job_id)
    assert record.status.value == "failed"
    assert record.error is not None and record.error.type == "review_expired"


def test_a_job_waiting_for_review_can_be_cancelled(
    aws: AwsStack, api: LoadedFunction, stopped_for_review: tuple[str, dict[str, Any]]
) -> None:
    job_id, _ = stopped_for_review
    cancelled = api(aws.api_event("api-cancel-job.json", job_id=job_id))
    assert cancelled["statusCode"] == 200
    assert body_of(cancelled)["status"] == "cancelled"


def test_approving_an_answer_over_budget_completes_it(
    aws: AwsStack, api: LoadedFunction, infer: LoadedFunction, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(baton.llm, "complete", ScriptedModel(ANSWER))
    job_id = submit(aws, api, {"input": {"prompt": "hi"}, "parameters": {"max_total_tokens": 10}})
    infer(aws.take_event("InferQueue"))
    assert get_job(aws, api, job_id)["error"]["type"] == "token_budget"
    job = body_of(job_post(aws, api, job_id, "review", {"decision": "approve"}))
    assert (job["status"], job["result"]["text"]) == ("completed", "It is 42.")
    assert "error" not in job


# -- re-run -----------------------------------------------------------------------------------------
def test_rerun_makes_a_new_job_with_overrides_and_leaves_the_original(
    aws: AwsStack, api: LoadedFunction
) -> None:
    webhook = {"url": "https://hooks.example.com/x", "auth": {"type": "bearer", "token": "s3cret"}}
    original_id = submit(
        aws,
        api,
        {
            "input": {"prompt": "Summarize."},
            "parameters": {"temperature": 0.2, "max_tokens": 100},
            "metadata": {"ticket": "T-1"},
            "webhook": webhook,
        },
    )
    aws.receive("InferQueue")
    store = JobStore(aws.jobs_table)
    before = store.get("acme", original_id)
    response = job_post(
        aws, api, original_id, "rerun", {"model": "other-model", "parameters": {"temperature": 0.9}}
    )
    assert response["statusCode"] == 202, response["body"]
    accepted = body_of(response)
    assert accepted["id"] != original_id
    assert accepted["status"] == "pending" and accepted["delivery"] == "webhook"
    rerun = store.get("acme", accepted["id"])
    assert rerun.rerun_of == original_id
    assert rerun.model == "other-model"
    assert rerun.request["parameters"] == {"temperature": 0.9, "max_tokens": 100}
    assert rerun.request["input"] == {"prompt": "Summarize."}
    assert rerun.metadata == {"ticket": "T-1"}
    # The original's webhook, its credentials still sealed for this tenant.
    assert rerun.webhook is not None and rerun.webhook["url"] == webhook["url"]
    sealed = unseal(rerun.webhook["auth_sealed"], tenant_id="acme")
    assert sealed.model_dump(exclude_none=True) == webhook["auth"]
    assert get_job(aws, api, accepted["id"])["rerun_of"] == original_id
    assert store.get("acme", original_id) == before
    assert [StageCommand.model_validate_json(m["Body"]).job_id for m in aws.receive("InferQueue")] == [
        accepted["id"]
    ]


def test_rerun_validates_overrides_and_tenancy(aws: AwsStack, api: LoadedFunction) -> None:
    original_id = submit(aws, api, {"input": {"prompt": "Summarize."}})
    bad = job_post(aws, api, original_id, "rerun", {"parameters": {"temperature": 7}})
    assert bad["statusCode"] == 422
    assert body_of(bad)["error"]["field"] == "parameters.temperature"
    assert job_post(aws, api, original_id, "rerun", {}, tenant="globex")["statusCode"] == 404
    plain = job_post(aws, api, original_id, "rerun", {})
    assert plain["statusCode"] == 202
