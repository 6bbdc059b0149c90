"""Documents through the real local stack: POST /v1/documents, a presigned PUT from the client's
side (no AWS credentials), jobs that read them, and documents longer than the model's context."""

from __future__ import annotations

import httpx
import pytest

from baton_dev.client import BatonClient

from ..unit.test_documents import make_docx
from .conftest import LocalStack, Tenant, wait_for_terminal

pytestmark = pytest.mark.integration


def test_presigned_put_works_from_the_client_without_aws_credentials(
    local_stack: LocalStack, api: httpx.Client, tenant: Tenant
) -> None:
    created = api.post("/v1/documents", json={"filename": "notes.md"})
    assert created.status_code == 201, created.text
    upload = created.json()["upload"]
    # The URL points at the AWS endpoint this client can reach (moto locally), path-style.
    assert upload["url"].startswith(local_stack.state["endpoint_url"])
    document_id = created.json()["id"]
    assert api.get(f"/v1/documents/{document_id}").json()["status"] == "awaiting_upload"

    # A plain HTTP PUT with exactly the given headers: no signature of our own, no API key.
    content = b"# Notes\n\nThe pilot starts in May."
    put = httpx.put(upload["url"], content=content, headers=upload["headers"])
    assert put.status_code == 200, put.text

    view = api.get(f"/v1/documents/{document_id}").json()
    assert view == {
        "id": document_id,
        "filename": "notes.md",
        "content_type": "text/markdown",
        "size": len(content),
        "status": "uploaded",
    }
    # Another tenant cannot see it, nor attach it to a job.
    other = local_stack.create_tenant("documents-other")
    with local_stack.client(other) as foreign:
        assert foreign.get(f"/v1/documents/{document_id}").status_code == 404
        job = foreign.post(
            "/v1/jobs", json={"input": {"prompt": "Summarize."}, "document": {"id": document_id}}
        )
        assert job.status_code == 422 and job.json()["error"]["field"] == "document.id"


def test_a_docx_job_answers_from_its_text(local_stack: LocalStack, tenant: Tenant, api: httpx.Client) -> None:
    docx = make_docx(
        [
            "Quarterly review of the Lisbon office.",
            "The Lisbon office doubled its revenue thanks to the new logistics contract.",
            "Hiring will continue through the spring.",
        ]
    )
    with BatonClient(local_stack.api_url, tenant.api_key) as client:
        document_id = client.upload("review.docx", docx)
    answer = api.post("/v1/jobs", json={"input": {"prompt": "Summarize."}, "document": {"id": document_id}})
    assert answer.status_code == 202, answer.text
    job = wait_for_terminal(api, answer.json()["id"])
    assert job["status"] == "completed", job
    assert "Lisbon office doubled its revenue" in job["result"]["text"]


def test_an_unreadable_document_fails_with_a_clear_error_type(api: httpx.Client) -> None:
    created = api.post("/v1/documents", json={"filename": "broken.pdf"}).json()
    put = httpx.put(
        created["upload"]["url"], content=b"%PDF-1.7 this is not a pdf", headers=created["upload"]["headers"]
    )
    assert put.status_code == 200
    answer = api.post("/v1/jobs", json={"input": {"prompt": "Summarize."}, "document": {"id": created["id"]}})
    job = wait_for_terminal(api, answer.json()["id"])
    assert job["status"] == "failed"
    assert job["error"]["type"] == "unreadable_document", job["error"]


def test_a_document_longer_than_the_models_context_completes_by_map_reduce(
    local_stack: LocalStack, tenant: Tenant, api: httpx.Client
) -> None:
    # ~70,000 simulator tokens: over twice the simulator's 32,768-token context (the default
    # ModelContextTokens), so one call with the whole text would be refused.
    paragraphs = [
        f"Section {i}. The harbour authority recorded {i * 7} container moves on day {i}. "
        f"Crane {i % 9} was serviced after {i * 3} hours of work. Weather delays were minor."
        for i in range(1, 2800)
    ]
    text = "\n\n".join(paragraphs)
    assert len(text) > 300_000
    with BatonClient(local_stack.api_url, tenant.api_key) as client:
        document_id = client.upload("harbour-log.txt", text.encode())
    answer = api.post(
        "/v1/jobs",
        json={"input": {"prompt": "Summarize the harbour log."}, "document": {"id": document_id}},
    )
    assert answer.status_code == 202, answer.text
    job = wait_for_terminal(api, answer.json()["id"], timeout_s=240)
    assert job["status"] == "completed", job
    document = job["document"]
    assert document["id"] == document_id and document["chars"] == len(text)
    assert document["chunks"] >= 3 and document["truncated"] is False
    assert "container moves" in job["result"]["text"]

    calls = local_stack.model_calls(job["id"])
    # One call per chunk, one combining call; every one accepted, none over the context.
    assert len(calls) >= document["chunks"] + 1
    assert all(call["status"] == 200 for call in calls), calls
    assert max(call["prompt_tokens"] for call in calls) <= 32_768
    assert job["usage"]["prompt_tokens"] == sum(call["prompt_tokens"] for call in calls)


def test_long_document_fail_and_truncate(local_stack: LocalStack, tenant: Tenant, api: httpx.Client) -> None:
    text = "The tide was high. " * 20_000  # 380,000 characters
    with BatonClient(local_stack.api_url, tenant.api_key) as client:
        document_id = client.upload("tides.txt", text.encode())
    jobs = {
        strategy: api.post(
            "/v1/jobs",
            json={
                "input": {"prompt": "Summarize."},
                "document": {"id": document_id},
                "parameters": {"long_document": strategy},
            },
        ).json()["id"]
        for strategy in ("fail", "truncate")
    }
    failed = wait_for_terminal(api, jobs["fail"])
    assert failed["status"] == "failed" and failed["error"]["type"] == "document_too_long"
    truncated = wait_for_terminal(api, jobs["truncate"])
    assert truncated["status"] == "completed", truncated
    assert truncated["document"]["truncated"] is True
    assert truncated["document"]["chars"] == len(text.strip())  # the document's length, not the cut's
    assert all(call["status"] == 200 for call in local_stack.model_calls(jobs["truncate"]))
