"""The jobs API end to end through the real local runtime: HTTP -> authorizer -> API -> SQS ->
extract/infer -> EventBridge -> notify, with moto server and the local model simulator."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest

from baton.intake import upload_job_id
from baton_dev.samples import SAMPLE_MARKDOWN, sample_report_pdf
from baton_dev.webhook_receiver import WebhookReceiver

from .conftest import CORS_ORIGIN, LocalStack, Tenant, queue_drained, wait_for_terminal, wait_until

pytestmark = pytest.mark.integration

ARTICLE = (
    "Queues decouple the API from slow model calls. A client gets an answer in milliseconds. "
    "The weather was pleasant on the day of the launch. Workers pull jobs from the queue at their own pace. "
    "Dead-letter queues keep poison messages for inspection."
)


def test_prompt_job_is_accepted_then_completes(api: httpx.Client) -> None:
    answer = api.post("/v1/jobs", json={"input": {"prompt": ARTICLE}, "metadata": {"ticket": "T-1"}})

    assert answer.status_code == 202
    body = answer.json()
    assert body["status"] == "pending"
    assert body["delivery"] == "polling"
    assert answer.headers["Location"] == f"/v1/jobs/{body['id']}"
    assert int(answer.headers["Retry-After"]) >= 1
    assert body["poll_url"].endswith(answer.headers["Location"])
    assert body["poll_url"].startswith("http://127.0.0.1")

    job = wait_for_terminal(api, body["id"])
    assert job["status"] == "completed", job
    assert job["metadata"] == {"ticket": "T-1"}
    # The simulator answers with an extractive summary: sentences of the input, not canned text.
    assert "Queues decouple the API from slow model calls." in job["result"]["text"]
    assert job["result"]["finish_reason"] == "stop"
    assert job["usage"]["prompt_tokens"] > 0 and job["usage"]["completion_tokens"] > 0
    assert job["usage"]["total_tokens"] == job["usage"]["prompt_tokens"] + job["usage"]["completion_tokens"]
    assert job["timings"]["infer_ms"] > 0 and job["timings"]["total_ms"] >= job["timings"]["infer_ms"]
    assert job["progress"] == 100
    assert "Retry-After" not in api.get(f"/v1/jobs/{body['id']}").headers


def test_prefer_wait_answers_200_with_the_finished_job(api: httpx.Client) -> None:
    answer = api.post("/v1/jobs", json={"input": {"prompt": ARTICLE}}, headers={"Prefer": "wait=20"})

    assert answer.status_code == 200
    assert answer.headers["Preference-Applied"] == "wait=20"
    assert answer.json()["status"] == "completed"


def test_prefer_wait_too_short_still_answers_202(api: httpx.Client) -> None:
    slow = {"input": {"prompt": f"[sim:slow=3000] {ARTICLE}"}}
    answer = api.post("/v1/jobs", json=slow, headers={"Prefer": "wait=1"})

    assert answer.status_code == 202
    assert answer.headers["Preference-Applied"] == "wait=1"


def test_get_wait_long_polls_until_the_job_changes(api: httpx.Client) -> None:
    job_id = api.post("/v1/jobs", json={"input": {"prompt": f"[sim:slow=1500] {ARTICLE}"}}).json()["id"]
    started = time.monotonic()
    seen = api.get(f"/v1/jobs/{job_id}", params={"wait": 10}).json()
    assert seen["status"] in {"pending", "processing", "completed"}
    # It returned on a change, well before the 10 s cap.
    assert time.monotonic() - started < 9.5
    assert wait_for_terminal(api, job_id)["status"] == "completed"


def test_pdf_document_job_extracts_then_infers(
    local_stack: LocalStack, api: httpx.Client, tenant: Tenant
) -> None:
    document_id = f"{uuid.uuid4().hex}-report.pdf"
    local_stack.aws("s3").put_object(
        Bucket=local_stack.state["bucket"],
        Key=f"documents/{tenant.name}/{document_id}",
        Body=sample_report_pdf(),
        ContentType="application/pdf",
    )
    answer = api.post(
        "/v1/jobs", json={"input": {"prompt": "Summarize the review."}, "document": {"id": document_id}}
    )
    assert answer.status_code == 202

    job = wait_for_terminal(api, answer.json()["id"])
    assert job["status"] == "completed", job
    assert job["timings"]["extract_ms"] is not None
    assert "Summarize the review" in job["result"]["text"]
    # Words from the PDF's pages reached the model: the summary quotes the document.
    assert any(word in job["result"]["text"] for word in ("latency", "queue", "deploy", "incident"))


def test_markdown_document_by_s3_uri(local_stack: LocalStack, api: httpx.Client, tenant: Tenant) -> None:
    key = f"documents/{tenant.name}/{uuid.uuid4().hex}.md"
    local_stack.aws("s3").put_object(
        Bucket=local_stack.state["bucket"], Key=key, Body=SAMPLE_MARKDOWN.encode()
    )
    uri = f"s3://{local_stack.state['bucket']}/{key}"
    answer = api.post("/v1/jobs", json={"input": {"prompt": "What changed?"}, "document": {"s3_uri": uri}})
    assert answer.status_code == 202
    assert wait_for_terminal(api, answer.json()["id"])["status"] == "completed"


def test_upload_under_tenant_prefix_becomes_a_job(
    local_stack: LocalStack, api: httpx.Client, tenant: Tenant
) -> None:
    key = f"uploads/{tenant.name}/{uuid.uuid4().hex}-review.pdf"
    put = local_stack.aws("s3").put_object(
        Bucket=local_stack.state["bucket"],
        Key=key,
        Body=sample_report_pdf(),
        ContentType="application/pdf",
        Metadata={"prompt": "List the action items."},
    )
    job_id = upload_job_id(local_stack.state["bucket"], key, put["ETag"])

    job = wait_for_terminal(api, job_id)
    assert job["status"] == "completed", job
    assert job["metadata"]["source_key"] == key
    assert (
        job["result"]["text"].startswith("Summary (List the action items.)")
        or "action" in job["result"]["text"].lower()
    )


def test_webhook_is_delivered_signed_and_verifiable(
    local_stack: LocalStack, api: httpx.Client, tenant: Tenant
) -> None:
    receiver = WebhookReceiver(tenant.webhook_secret)
    try:
        answer = api.post("/v1/jobs", json={"input": {"prompt": ARTICLE}, "webhook": {"url": receiver.url}})
        assert answer.status_code == 202
        assert answer.json()["delivery"] == "webhook"
        job_id = answer.json()["id"]
        assert wait_for_terminal(api, job_id)["status"] == "completed"
        receiver.wait_for(1, timeout=30)
    finally:
        receiver.stop()
    deliveries = [
        event for event in receiver.events if event.payload and event.payload["data"]["id"] == job_id
    ]
    assert deliveries, receiver.events
    delivery = deliveries[0]
    assert delivery.verified
    assert delivery.webhook_id == f"msg_{job_id}_completed"
    assert delivery.payload["type"] == "job.completed"
    assert delivery.payload["data"]["result"]["text"]
    # Delivery timing is recorded on the job afterwards.
    deadline = time.monotonic() + 10
    while (
        time.monotonic() < deadline and api.get(f"/v1/jobs/{job_id}").json()["timings"]["notify_ms"] is None
    ):
        time.sleep(0.2)
    assert api.get(f"/v1/jobs/{job_id}").json()["timings"]["notify_ms"] is not None


def test_idempotency_key_replays_the_same_job(api: httpx.Client) -> None:
    key = f"order-{uuid.uuid4().hex}"
    body = {"input": {"prompt": ARTICLE}}
    first = api.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
    second = api.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
    different = api.post("/v1/jobs", json={"input": {"prompt": "other"}}, headers={"Idempotency-Key": key})

    assert first.status_code == 202 and second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert different.status_code == 422
    assert different.json()["error"]["field"] == "Idempotency-Key"


def test_cancel_stops_a_job_and_discards_its_late_result(local_stack: LocalStack, api: httpx.Client) -> None:
    job_id = api.post("/v1/jobs", json={"input": {"prompt": f"[sim:slow=2500] {ARTICLE}"}}).json()["id"]
    wait_until(
        lambda: api.get(f"/v1/jobs/{job_id}").json()["current_step"] == "infer",
        "the infer stage started (it calls the slow model next)",
    )

    cancelled = api.delete(f"/v1/jobs/{job_id}")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"

    # The model answers meanwhile, and the infer stage finishes with that message: its result must
    # not have overwritten the cancellation.
    wait_until(
        lambda: any(call["status"] == 200 for call in local_stack.model_calls(job_id)),
        "the slow model call answered",
    )
    wait_until(lambda: queue_drained(local_stack, "InferQueue"), "the infer stage is done with the job")
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "cancelled"
    assert "result" not in job
    again = api.delete(f"/v1/jobs/{job_id}")
    assert again.status_code == 409
    assert again.json()["error"]["type"] == "conflict"


def test_another_tenants_job_is_404(local_stack: LocalStack, api: httpx.Client, other_tenant: Tenant) -> None:
    job_id = api.post("/v1/jobs", json={"input": {"prompt": ARTICLE}}).json()["id"]
    with local_stack.client(other_tenant) as other:
        assert other.get(f"/v1/jobs/{job_id}").status_code == 404
        assert other.delete(f"/v1/jobs/{job_id}").status_code == 404
        unknown = other.get("/v1/jobs/job_doesnotexist")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["type"] == "not_found"
    assert api.get(f"/v1/jobs/{job_id}").status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "input"),
        ({"input": {}}, "input"),
        ({"input": {"prompt": "x", "messages": [{"role": "user", "content": "x"}]}}, "input"),
        ({"input": {"prompt": "x"}, "parameters": {"temperature": 5}}, "parameters.temperature"),
        ({"input": {"prompt": "x"}, "colour": "red"}, "colour"),
        ({"input": {"prompt": "x"}, "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"input": {"prompt": "x"}, "webhook": {"url": "ftp://example.com"}}, "webhook.url"),
        ({"input": {"prompt": "x"}, "document": {"id": "missing.pdf"}}, "document.id"),
    ],
)
def test_bad_bodies_get_422_naming_the_field(api: httpx.Client, body: dict[str, object], field: str) -> None:
    answer = api.post("/v1/jobs", json=body)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["field"] == field
    assert field.split(".")[0] in error["message"]


def test_malformed_json_is_a_clear_400(api: httpx.Client) -> None:
    answer = api.post(
        "/v1/jobs", content=b'{"input": {"prompt": ', headers={"Content-Type": "application/json"}
    )
    assert answer.status_code in {400, 422}
    assert answer.json()["error"]["type"] in {"invalid_json", "validation_error"}
    assert "Traceback" not in answer.text


@pytest.mark.parametrize("authorization", [None, "Bearer bk_not-a-real-key", "Basic abc"])
def test_requests_without_a_valid_key_get_401(local_stack: LocalStack, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    answer = httpx.post(f"{local_stack.api_url}/v1/jobs", json={"input": {"prompt": "x"}}, headers=headers)
    assert answer.status_code == 401
    assert answer.json() == {"error": {"type": "unauthorized", "message": "missing or invalid API key"}}


def test_unknown_route_is_rejected_like_api_gateway(api: httpx.Client) -> None:
    answer = api.get("/v2/everything")
    assert answer.status_code == 403
    assert json.loads(answer.text)["error"]["message"] == "Missing Authentication Token"


def test_a_form_encoded_body_gets_415_not_a_confusing_422(api: httpx.Client) -> None:
    answer = api.post(
        "/v1/jobs",
        content=b'{"input": {"prompt": "x"}}',
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert answer.status_code == 415
    assert answer.json()["error"]["field"] == "Content-Type"


# -- listing and the API's own description ------------------------------------------------------
def test_list_pages_through_jobs_newest_first_and_filters_by_status(
    local_stack: LocalStack, api: httpx.Client, other_tenant: Tenant
) -> None:
    ids = [api.post("/v1/jobs", json={"input": {"prompt": ARTICLE}}).json()["id"] for _ in range(3)]
    for job_id in ids:
        assert wait_for_terminal(api, job_id)["status"] == "completed"

    seen: list[str] = []
    cursor = None
    while len(seen) < 3:
        params: dict[str, str | int] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.get("/v1/jobs", params=params).json()
        seen += [job["id"] for job in page["data"]]
        cursor = page["next_cursor"]
        assert cursor, page
    assert seen[:3] == list(reversed(ids))  # these three were the newest, newest first

    completed = api.get("/v1/jobs", params={"status": "completed", "limit": 100}).json()["data"]
    assert set(ids) <= {job["id"] for job in completed}
    assert all(job["status"] == "completed" for job in completed)
    with local_stack.client(other_tenant) as other:
        assert not set(ids) & {job["id"] for job in other.get("/v1/jobs").json()["data"]}
    assert api.get("/v1/jobs", params={"limit": 101}).json()["error"]["field"] == "limit"


def test_openapi_document_and_swagger_ui_need_no_key(local_stack: LocalStack) -> None:
    document = httpx.get(f"{local_stack.api_url}/v1/openapi.json", timeout=30)
    assert document.status_code == 200
    spec = document.json()
    assert {"/v1/jobs", "/v1/jobs/{job_id}"} <= set(spec["paths"])
    docs = httpx.get(f"{local_stack.api_url}/docs", timeout=30)
    assert docs.status_code == 200
    assert docs.headers["Content-Type"].startswith("text/html")
    assert "swagger" in docs.text.lower()


def test_a_finished_job_shows_what_it_cost(api: httpx.Client) -> None:
    job_id = api.post("/v1/jobs", json={"input": {"prompt": ARTICLE}}).json()["id"]
    job = wait_for_terminal(api, job_id)
    assert job["status"] == "completed"
    # The local model is in the default price table at 0/0; AWS requests are priced at list price.
    assert job["cost"]["model_usd"] == 0
    assert 0 < job["cost"]["aws_usd"] < 0.001
    unpriced = api.post("/v1/jobs", json={"input": {"prompt": ARTICLE}, "model": "no-such-model"}).json()
    assert wait_for_terminal(api, unpriced["id"])["cost"]["model_usd"] is None


def test_a_browser_on_the_allowed_origin_gets_preflight_and_answers(
    local_stack: LocalStack, api: httpx.Client
) -> None:
    # The preflight: answered by the gateway (no key), naming the origin and the headers we use.
    preflight = httpx.options(
        f"{local_stack.api_url}/v1/jobs",
        headers={
            "Origin": CORS_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type,idempotency-key,prefer",
        },
        timeout=30,
    )
    assert preflight.status_code == 200, preflight.text
    assert preflight.headers["Access-Control-Allow-Origin"] == CORS_ORIGIN
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    allowed = {name.strip().lower() for name in preflight.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "idempotency-key", "prefer"} <= allowed

    # The function's answers, errors included, carry it, and expose Location to the page.
    accepted = api.post("/v1/jobs", json={"input": {"prompt": "cors"}}, headers={"Origin": CORS_ORIGIN})
    assert accepted.status_code == 202
    assert accepted.headers["Access-Control-Allow-Origin"] == CORS_ORIGIN
    assert "Location" in accepted.headers["Access-Control-Expose-Headers"]
    invalid = api.post("/v1/jobs", json={"input": {}}, headers={"Origin": CORS_ORIGIN})
    assert invalid.status_code == 422
    assert invalid.headers["Access-Control-Allow-Origin"] == CORS_ORIGIN
    # And so do the gateway's own answers (a missing key), so the page can read why.
    unauthorized = httpx.get(f"{local_stack.api_url}/v1/jobs", headers={"Origin": CORS_ORIGIN}, timeout=30)
    assert unauthorized.status_code == 401
    assert unauthorized.headers["Access-Control-Allow-Origin"] == CORS_ORIGIN
