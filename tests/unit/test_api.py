"""The jobs API handler (functions/api) driven by events/api-*.json on the template's data plane."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import boto3
import pytest

import baton.intake
import baton.llm
from baton.llm import Completion
from baton.models import StageCommand, Step
from baton.records import JobRecord, Usage
from baton.store import JobStore

if TYPE_CHECKING:
    from conftest import AwsStack, EventTap, LoadedFunction

CREATE = "api-create-job.json"
GET = "api-get-job.json"
CANCEL = "api-cancel-job.json"
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def header(response: dict[str, Any], name: str) -> str | None:
    for key, values in (response.get("multiValueHeaders") or {}).items():
        if key.lower() == name.lower():
            return str(values[0])
    for key, value in (response.get("headers") or {}).items():
        if key.lower() == name.lower():
            return str(value)
    return None


def body_of(response: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(response["body"])
    return body


def post(aws: AwsStack, api: LoadedFunction, body: Any = None, **options: Any) -> dict[str, Any]:
    """POST /v1/jobs without the sample's Idempotency-Key unless the test sets headers itself."""
    options.setdefault("drop_headers", ("Idempotency-Key",))
    response: dict[str, Any] = api(aws.api_event(CREATE, body=body, **options))
    return response


def create_job(aws: AwsStack, api: LoadedFunction, body: Any = None, **options: Any) -> str:
    response = post(aws, api, body, **options)
    assert response["statusCode"] == 202, response["body"]
    return str(body_of(response)["id"])


def jobs_in_table(aws: AwsStack) -> list[dict[str, Any]]:
    items = boto3.client("dynamodb").scan(TableName=aws.jobs_table)["Items"]
    return [item for item in items if item["sk"]["S"].startswith("JOB#")]


def assert_error(
    response: dict[str, Any], status: int, error_type: str | None, field: str | None = None
) -> str:
    assert response["statusCode"] == status, response["body"]
    assert header(response, "Content-Type") == "application/json"
    error = body_of(response)["error"]
    assert set(error) <= {"type", "message", "field"}
    if error_type is not None:
        assert error["type"] == error_type
    if field is not None:
        assert error["field"] == field
    assert "Traceback" not in error["message"]
    return str(error["message"])


# -- POST /v1/jobs -------------------------------------------------------------------------------
def test_post_accepts_a_job(aws: AwsStack, api: LoadedFunction, bus_events: EventTap) -> None:
    response = post(aws, api)
    assert response["statusCode"] == 202
    body = body_of(response)
    job_id = body["id"]
    assert re.fullmatch(r"job_[0-9a-f]{32}", job_id)
    assert body["status"] == "pending"
    assert body["delivery"] == "polling"
    assert ISO_MS.match(body["created_at"])
    assert header(response, "Location") == f"/dev/v1/jobs/{job_id}"  # the stage prefix is kept
    assert body["poll_url"] == f"https://a1b2c3d4e5.execute-api.us-east-1.amazonaws.com/dev/v1/jobs/{job_id}"
    assert header(response, "Retry-After") == "2"
    assert header(response, "Preference-Applied") == "respond-async"
    assert set(body) == {"id", "status", "created_at", "poll_url", "delivery"}

    record = JobStore(aws.jobs_table).get("acme", job_id)
    assert record.status.value == "pending"
    assert record.metadata == {"customer": "acme-42", "ticket": "OPS-1187"}
    assert record.model == "baton-local"
    assert record.request["parameters"]["temperature"] == 0.2

    messages = aws.receive("InferQueue")
    assert [StageCommand.model_validate_json(m["Body"]) for m in messages] == [
        StageCommand(job_id=job_id, tenant_id="acme", step=Step.INFER, version=1, depth=0)
    ]
    assert aws.queued("ExtractQueue") == 0

    events = bus_events.drain()
    assert [event["detail-type"] for event in events] == ["Job Accepted"]
    assert events[0]["source"] == "baton.jobs"
    detail = events[0]["detail"]
    assert (detail["job_id"], detail["tenant_id"], detail["status"]) == (job_id, "acme", "pending")
    assert detail["metadata"] == {"customer": "acme-42", "ticket": "OPS-1187"}
    # Accepted is not terminal: nothing reaches the notify stage's queue.
    assert aws.queued("NotifyQueue") == 0


def test_accepting_a_job_makes_one_write_one_command_and_one_event(
    aws: AwsStack, api: LoadedFunction
) -> None:
    """The job's conditional put is its only write: no second update marks the hand-off."""
    from collections import Counter

    from tests.unit.conftest import recorded_calls

    with recorded_calls() as calls:
        assert post(aws, api)["statusCode"] == 202
    made = Counter(f"{c.service}:{c.operation}" for c in calls if c.function == "ApiFunction")
    assert made == Counter({"dynamodb:PutItem": 1, "events:PutEvents": 1, "sqs:SendMessage": 1})


def test_a_retry_after_a_failed_hand_off_hands_the_pending_job_off(
    aws: AwsStack, api: LoadedFunction, bus_events: EventTap, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first attempt stored the job and failed before its command was queued (no mark says
    on an API job): the client's retry with the same Idempotency-Key queues it, once."""
    start = baton.intake.JobIntake._start

    def fails_after_the_write(self: Any, record: JobRecord, **options: Any) -> None:
        raise RuntimeError("the hand-off failed")

    monkeypatch.setattr(baton.intake.JobIntake, "_start", fails_after_the_write)
    assert api(aws.api_event(CREATE))["statusCode"] >= 500
    assert len(jobs_in_table(aws)) == 1 and aws.queued("InferQueue") == 0

    monkeypatch.setattr(baton.intake.JobIntake, "_start", start)
    retried = api(aws.api_event(CREATE))
    assert retried["statusCode"] == 202, retried["body"]
    messages = aws.receive("InferQueue")
    assert [StageCommand.model_validate_json(m["Body"]).job_id for m in messages] == [body_of(retried)["id"]]
    assert [event["detail-type"] for event in bus_events.drain()] == ["Job Accepted"]


def test_post_with_webhook_keeps_credentials_out_of_the_request(aws: AwsStack, api: LoadedFunction) -> None:
    webhook = {"url": "https://hooks.example.com/baton", "auth": {"type": "bearer", "token": "s3cret"}}
    response = post(aws, api, {"input": {"prompt": "hi"}, "webhook": webhook})
    assert body_of(response)["delivery"] == "webhook"
    record = JobStore(aws.jobs_table).get("acme", body_of(response)["id"])
    assert record.webhook is not None and record.webhook["url"] == webhook["url"]
    assert set(record.webhook) == {"url", "auth_sealed"}  # the credentials, sealed with KMS
    assert "s3cret" not in json.dumps(record.webhook)
    assert "webhook" not in record.request
    assert "s3cret" not in json.dumps(record.public_view())


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"metadata": {"a": "b"}}, "input"),
        ({"input": {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}}, "input"),
        ({"input": {"prompt": "a"}, "parameters": {"temperature": 5}}, "parameters.temperature"),
        ({"input": {"prompt": "a"}, "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"input": {"prompt": "a"}, "priority": 1}, "priority"),
        ({"input": {"prompt": "a"}, "webhook": {"url": "ftp://example.com/x"}}, "webhook.url"),
    ],
    ids=["missing-input", "prompt-and-messages", "temperature", "metadata-size", "unknown", "webhook"],
)
def test_post_invalid_body_is_422_naming_the_field(
    aws: AwsStack, api: LoadedFunction, body: dict[str, Any], field: str
) -> None:
    response = post(aws, api, body)
    message = assert_error(response, 422, "validation_error", field)
    assert message.startswith(f"{field}: ")
    assert jobs_in_table(aws) == []
    assert aws.queued("InferQueue") == 0


@pytest.mark.parametrize("raw", ["{not json", '{"input": {"prompt": "a"}', ""])
def test_post_malformed_json_is_a_4xx_with_an_error_body(
    aws: AwsStack, api: LoadedFunction, raw: str
) -> None:
    response = post(aws, api, raw_body=raw)
    assert 400 <= response["statusCode"] < 500
    error = body_of(response)["error"]
    assert error["type"] in {"invalid_json", "validation_error"}
    assert jobs_in_table(aws) == []


def test_post_non_object_body_is_422(aws: AwsStack, api: LoadedFunction) -> None:
    assert_error(post(aws, api, raw_body="[1, 2]"), 422, "validation_error", "body")


def test_post_prompt_over_the_configured_limit_is_422(aws: AwsStack) -> None:
    api = aws.load("ApiFunction", BATON_MAX_PROMPT_CHARS="10")
    assert_error(post(aws, api, {"input": {"prompt": "x" * 11}}), 422, "invalid_request", "input")
    assert post(aws, api, {"input": {"prompt": "x" * 10}})["statusCode"] == 202


def test_post_with_a_document_goes_to_extract(aws: AwsStack, api: LoadedFunction) -> None:
    boto3.client("s3").put_object(Bucket=aws.bucket, Key="documents/acme/notes.txt", Body=b"Some notes.")
    job_id = create_job(aws, api, {"input": {"prompt": "Summarize"}, "document": {"id": "notes.txt"}})
    assert JobStore(aws.jobs_table).get("acme", job_id).document_key == "documents/acme/notes.txt"
    command = StageCommand.model_validate_json(aws.receive("ExtractQueue")[0]["Body"])
    assert (command.job_id, command.step) == (job_id, Step.EXTRACT)
    assert aws.queued("InferQueue") == 0


def test_post_with_unknown_or_foreign_documents_is_422(aws: AwsStack, api: LoadedFunction) -> None:
    s3 = boto3.client("s3")
    s3.put_object(Bucket=aws.bucket, Key="documents/globex/secret.txt", Body=b"not yours")
    prompt = {"prompt": "Summarize"}
    assert_error(
        post(aws, api, {"input": prompt, "document": {"id": "missing.txt"}}),
        422,
        "invalid_request",
        "document.id",
    )
    assert_error(
        post(aws, api, {"input": prompt, "document": {"id": "../globex/secret.txt"}}),
        422,
        "invalid_request",
        "document.id",
    )
    for uri in (
        f"s3://{aws.bucket}/documents/globex/secret.txt",
        "s3://someone-elses-bucket/documents/acme/x",
    ):
        assert_error(
            post(aws, api, {"input": prompt, "document": {"s3_uri": uri}}),
            422,
            "invalid_request",
            "document.s3_uri",
        )
    assert jobs_in_table(aws) == []


# -- GET /v1/jobs/{id} ---------------------------------------------------------------------------
def test_get_returns_the_job(aws: AwsStack, api: LoadedFunction) -> None:
    job_id = create_job(aws, api)
    response = api(aws.api_event(GET, job_id=job_id))
    assert response["statusCode"] == 200
    job = body_of(response)
    assert job["id"] == job_id
    assert job["status"] == "pending"
    assert job["current_step"] is None
    assert job["progress"] == 0
    assert ISO_MS.match(job["created_at"]) and ISO_MS.match(job["updated_at"])
    assert job["metadata"] == {"customer": "acme-42", "ticket": "OPS-1187"}
    assert job["model"] == "baton-local"
    assert job["depth"] == 0
    assert job["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert set(job["timings"]) == {"queued_ms", "extract_ms", "infer_ms", "notify_ms", "total_ms"}
    assert "result" not in job and "error" not in job
    assert header(response, "Retry-After") == "2"


def test_other_tenants_and_unknown_ids_are_404(aws: AwsStack, api: LoadedFunction) -> None:
    job_id = create_job(aws, api)
    foreign = api(aws.api_event(GET, job_id=job_id, tenant="globex"))
    unknown = api(aws.api_event(GET, job_id="job_00000000000000000000000000000000"))
    assert_error(foreign, 404, "not_found")
    assert_error(unknown, 404, "not_found")
    # A foreign id answers exactly as an unknown one: nothing leaks.
    assert body_of(foreign)["error"]["message"].replace(job_id, "ID") == body_of(unknown)["error"][
        "message"
    ].replace("job_00000000000000000000000000000000", "ID")
    assert_error(api(aws.api_event(CANCEL, job_id=job_id, tenant="globex")), 404, "not_found")
    assert JobStore(aws.jobs_table).get("acme", job_id).status.value == "pending"


def test_get_with_invalid_wait_is_422(aws: AwsStack, api: LoadedFunction) -> None:
    job_id = create_job(aws, api)
    assert_error(
        api(aws.api_event(GET, job_id=job_id, query={"wait": "-1"})), 422, "validation_error", "wait"
    )
    assert_error(
        api(aws.api_event(GET, job_id=job_id, query={"wait": "soon"})), 422, "validation_error", "wait"
    )


def test_unknown_route_is_404_with_an_error_body(aws: AwsStack, api: LoadedFunction) -> None:
    event = aws.api_event(GET)
    event["path"] = "/v1/nothing"
    assert_error(api(event), 404, "not_found")


# -- DELETE /v1/jobs/{id} ------------------------------------------------------------------------
def test_delete_cancels_then_conflicts(aws: AwsStack, api: LoadedFunction) -> None:
    job_id = create_job(aws, api)
    first = api(aws.api_event(CANCEL, job_id=job_id))
    assert first["statusCode"] == 200
    job = body_of(first)
    assert job["status"] == "cancelled"
    assert job["error"]["type"] == "cancelled"
    assert header(first, "Retry-After") is None  # terminal: nothing more to poll for
    assert_error(api(aws.api_event(CANCEL, job_id=job_id)), 409, "conflict")
    assert body_of(api(aws.api_event(GET, job_id=job_id)))["status"] == "cancelled"
    # The template's rule routes the terminal event to the notify stage.
    events = [json.loads(m["Body"]) for m in aws.receive("NotifyQueue")]
    assert [event["detail-type"] for event in events] == ["Job Cancelled"]
    assert events[0]["detail"]["job"]["status"] == "cancelled"


def test_delete_of_unknown_job_is_404(aws: AwsStack, api: LoadedFunction) -> None:
    assert_error(api(aws.api_event(CANCEL, job_id="job_00000000000000000000000000000000")), 404, "not_found")


# -- Idempotency-Key -----------------------------------------------------------------------------
def test_same_idempotency_key_and_body_gives_the_same_job(aws: AwsStack, api: LoadedFunction) -> None:
    first = api(aws.api_event(CREATE))
    second = api(aws.api_event(CREATE))
    assert first["statusCode"] == second["statusCode"] == 202
    assert body_of(first)["id"] == body_of(second)["id"]
    assert body_of(first)["created_at"] == body_of(second)["created_at"]
    assert len(jobs_in_table(aws)) == 1
    assert aws.queued("InferQueue") == 1
    record = JobStore(aws.jobs_table).get("acme", body_of(first)["id"])
    assert record.idempotency_key == "8e03978e-40d5-43e8-bc93-6894a57f9324"


def test_same_idempotency_key_with_another_body_is_422(aws: AwsStack, api: LoadedFunction) -> None:
    assert api(aws.api_event(CREATE))["statusCode"] == 202
    response = api(aws.api_event(CREATE, body={"input": {"prompt": "something else"}}))
    assert_error(response, 422, "idempotency_key_reused", "Idempotency-Key")
    assert len(jobs_in_table(aws)) == 1


def test_idempotency_keys_are_scoped_to_the_tenant(aws: AwsStack, api: LoadedFunction) -> None:
    acme = body_of(api(aws.api_event(CREATE)))["id"]
    globex = body_of(api(aws.api_event(CREATE, tenant="globex")))["id"]
    assert acme != globex
    assert JobStore(aws.jobs_table).get("globex", globex).tenant_id == "globex"


def test_malformed_idempotency_key_is_422(aws: AwsStack, api: LoadedFunction) -> None:
    response = api(aws.api_event(CREATE, headers={"Idempotency-Key": "has spaces"}))
    assert_error(response, 422, "invalid_request", "Idempotency-Key")
    assert jobs_in_table(aws) == []


# -- Prefer --------------------------------------------------------------------------------------
def test_prefer_wait_zero_answers_202_at_once(aws: AwsStack, api: LoadedFunction) -> None:
    response = post(aws, api, headers={"Prefer": "wait=0"})
    assert response["statusCode"] == 202
    assert header(response, "Preference-Applied") == "wait=0"
    assert header(response, "Retry-After") == "2"
    assert body_of(response)["status"] == "pending"


def test_prefer_wait_is_capped_by_the_configured_maximum(aws: AwsStack) -> None:
    api = aws.load("ApiFunction", BATON_MAX_WAIT_SECONDS="0")
    response = post(aws, api, headers={"Prefer": "respond-async, wait=600"})
    assert response["statusCode"] == 202
    assert header(response, "Preference-Applied") == "wait=0"


def test_prefer_wait_answers_200_with_the_finished_job(
    aws: AwsStack, api: LoadedFunction, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the API waits, the infer stage finishes the job: the answer is the finished job."""
    infer = aws.load("InferFunction")
    completion = Completion(text="Done.", finish_reason="stop", tool_calls=None, usage=Usage(total_tokens=4))
    monkeypatch.setattr(baton.llm, "complete", lambda *args, **kwargs: completion)
    sleeps: list[float] = []

    def pipeline_runs_meanwhile(seconds: float) -> None:
        if not sleeps:
            infer(aws.take_event("InferQueue"))
        sleeps.append(seconds)

    monkeypatch.setattr(baton.intake.time, "sleep", pipeline_runs_meanwhile)
    response = post(aws, api, headers={"Prefer": "wait=5"})
    assert response["statusCode"] == 200, response["body"]
    assert header(response, "Preference-Applied") == "wait=5"
    assert header(response, "Retry-After") is None
    assert header(response, "Location") is not None
    job = body_of(response)
    assert job["status"] == "completed"
    assert job["result"] == {"text": "Done.", "finish_reason": "stop"}
    assert len(sleeps) == 1


def test_get_with_wait_returns_when_the_job_changes(
    aws: AwsStack, api: LoadedFunction, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = create_job(aws, api)
    store = JobStore(aws.jobs_table)

    def job_starts_meanwhile(seconds: float) -> None:
        record: JobRecord = store.get("acme", job_id)
        if record.status.value == "pending":
            store.start_step(record, Step.INFER, progress=50)

    monkeypatch.setattr(baton.intake.time, "sleep", job_starts_meanwhile)
    response = api(aws.api_event(GET, job_id=job_id, query={"wait": "20"}))
    job = body_of(response)
    assert (job["status"], job["current_step"], job["progress"]) == ("processing", "infer", 50)
    assert header(response, "Retry-After") == "2"


@pytest.mark.parametrize("header", ["Content-Type", "content-type"])
def test_post_form_body_is_415(aws: AwsStack, api: LoadedFunction, header: str) -> None:
    """curl -d without a content type sends a form; the API says plainly it wants JSON."""
    response = post(
        aws,
        api,
        raw_body="input=hello",
        drop_headers=("Idempotency-Key", "Content-Type"),
        headers={header: "application/x-www-form-urlencoded"},
    )
    assert_error(response, 415, "unsupported_media_type", "Content-Type")
    assert jobs_in_table(aws) == []


def test_idempotency_key_still_in_flight_is_409(
    aws: AwsStack, api: LoadedFunction, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client retry that arrives (on another instance) while the first request is being
    processed is told to retry shortly, and no second job is made."""
    other_instance = aws.load("ApiFunction")
    concurrent: list[dict[str, Any]] = []
    start = baton.intake.JobIntake._start

    def slow_start(service: baton.intake.JobIntake, record: JobRecord, **options: Any) -> None:
        if not concurrent:
            concurrent.append(other_instance(aws.api_event(CREATE)))
        start(service, record, **options)

    monkeypatch.setattr(baton.intake.JobIntake, "_start", slow_start)
    first = api(aws.api_event(CREATE))
    assert first["statusCode"] == 202
    assert_error(concurrent[0], 409, "idempotency_in_flight")
    assert len(jobs_in_table(aws)) == 1
    retried = other_instance(aws.api_event(CREATE))
    assert body_of(retried)["id"] == body_of(first)["id"]


# -- GET /v1/jobs --------------------------------------------------------------------------------
def list_event(aws: AwsStack, tenant: str = "acme", **query: str) -> dict[str, Any]:
    event = aws.api_event(GET, tenant=tenant, query=query or None)
    event["path"] = event["resource"] = "/v1/jobs"
    event["requestContext"]["path"] = f"/{event['requestContext']['stage']}/v1/jobs"
    event["requestContext"]["resourcePath"] = "/v1/jobs"
    event["pathParameters"] = None
    if not query:
        event["queryStringParameters"] = event["multiValueQueryStringParameters"] = None
    return event


def test_list_pages_through_the_tenants_jobs_newest_first(
    aws: AwsStack, api: LoadedFunction, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = iter(range(1_900_000_000_000, 1_900_000_100_000, 1000))
    monkeypatch.setattr(baton.intake, "now_ms", lambda: next(clock))  # one created_ms per job
    created = [create_job(aws, api) for _ in range(5)]
    create_job(aws, api, tenant="globex")

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        response = api(list_event(aws, **query))
        assert response["statusCode"] == 200, response["body"]
        page = body_of(response)
        assert set(page) == {"data", "next_cursor"}
        assert len(page["data"]) <= 2
        seen += [job["id"] for job in page["data"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(created))  # newest first, each once, no other tenant's
    assert pages == 3
    first = body_of(api(list_event(aws)))["data"][0]
    assert first == body_of(api(aws.api_event(GET, job_id=created[-1])))  # the same job view as GET


def test_list_filters_by_status(aws: AwsStack, api: LoadedFunction) -> None:
    kept, cancelled = create_job(aws, api), create_job(aws, api)
    assert api(aws.api_event(CANCEL, job_id=cancelled))["statusCode"] == 200
    only_cancelled = body_of(api(list_event(aws, status="cancelled")))
    assert [job["id"] for job in only_cancelled["data"]] == [cancelled]
    assert only_cancelled["next_cursor"] is None
    assert [job["id"] for job in body_of(api(list_event(aws, status="pending")))["data"]] == [kept]
    assert body_of(api(list_event(aws, tenant="globex")))["data"] == []


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"status": "sleeping"}, "status"),
        ({"cursor": "not-a-cursor"}, "cursor"),
    ],
)
def test_list_rejects_bad_parameters_naming_them(
    aws: AwsStack, api: LoadedFunction, query: dict[str, str], field: str
) -> None:
    assert_error(api(list_event(aws, **query)), 422, None, field)


def test_a_cursor_cannot_reach_another_tenant(aws: AwsStack, api: LoadedFunction) -> None:
    for _ in range(2):
        create_job(aws, api, tenant="globex")
    create_job(aws, api)
    globex_cursor = body_of(api(list_event(aws, tenant="globex", limit="1")))["next_cursor"]
    assert globex_cursor
    page = body_of(api(list_event(aws, cursor=globex_cursor)))
    tenants = {JobStore(aws.jobs_table).get("acme", job["id"]).tenant_id for job in page["data"]}
    assert tenants <= {"acme"}
